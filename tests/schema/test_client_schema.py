"""Client schema of the second project: integer keys to auth.User, MTI, every common field type."""

from io import StringIO

import orjson
from django.core.management import call_command


def tables() -> dict:
    out = StringIO()
    call_command("powersync_schema", "--lang", "json", stdout=out)
    return {t["name"]: t for t in orjson.loads(out.getvalue())["tables"]}


def test_types_follow_the_value_encoding():
    docs = tables()["documents"]
    types = {c["name"]: c["type"] for c in docs["columns"]}
    assert types["owner_id"] == "integer"  # integer FK to auth.User
    assert types["folder_id"] == "text"  # UUID FK
    assert {types[n] for n in ("title", "body", "price", "due", "remind_at", "attachment", "created_at", "ref")} \
        == {"text"}
    assert types["duration"] == types["rating"] == "real"
    assert types["pages"] == types["archived"] == "integer"
    assert "id" not in types
    assert {i["name"] for i in docs["indexes"]} == {"owner", "folder"}
    assert docs["models"] == ["workspace.Document"]


def test_multi_table_inheritance_child_table():
    tasks = tables()["tasks"]
    names = [c["name"] for c in tasks["columns"]]
    assert "id" not in names and "done" in names and "team_id" in names
