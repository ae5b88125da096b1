"""``manage.py powersync_schema``: the client schema derived from the definitions, for every official SDK."""

from io import StringIO
from pathlib import Path

import orjson
import pytest
from django.core.management import call_command
from django.test import override_settings

GOLDEN = Path(__file__).parent / "golden"


def generate(lang: str, *args: str) -> str:
    out = StringIO()
    call_command("powersync_schema", "--lang", lang, *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("lang", ["ts", "dart", "kotlin", "swift", "json"])
def test_demo_schema_matches_golden_file(lang):
    assert generate(lang) == (GOLDEN / f"demo_schema.{lang}").read_text()


def test_json_types_follow_the_value_encoding():
    doc = orjson.loads(generate("json"))
    todos = next(t for t in doc["tables"] if t["name"] == "todos")
    assert todos["models"] == ["todos.Todo"]
    assert {c["name"]: c["type"] for c in todos["columns"]} == {
        "list_id": "text", "description": "text", "completed": "integer", "created_by": "text",
        "created_at": "text", "completed_at": "text"}
    assert todos["indexes"] == [{"name": "list", "columns": ["list_id"]}]


def test_out_file_and_package(tmp_path):
    target = tmp_path / "schema.ts"
    call_command("powersync_schema", "--lang", "ts", "--package", "@powersync/node", "--out", str(target),
                 stderr=StringIO())
    text = target.read_text()
    assert "from '@powersync/node';" in text and '"todos": new Table(' in text


def test_invalid_definitions_are_a_command_error(settings):
    from django.core.management.base import CommandError

    with override_settings(POWERSYNC={**settings.POWERSYNC, "BUCKETS": {"x": {"data": ["nope.Model"]}}}):
        with pytest.raises(CommandError, match="check"):
            generate("ts")
