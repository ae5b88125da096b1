import uuid

import pytest
from django.core import checks
from django.test import override_settings

from powersync_django import rules
from powersync_django.conf import get_config

DEMO = get_config()["BUCKETS"]


def parse(buckets):
    return rules.parse({"BUCKETS": buckets, "DATETIME_FORMAT": "space"})


def test_bucket_id_format():
    assert rules.bucket_id("user_lists", ["u1"], 0) == 'user_lists["u1"]'
    assert rules.bucket_id("global", [], 0) == "global[]"
    assert rules.bucket_id("by", ["o1", 7], 3) == '3#by["o1",7]'


def test_row_buckets_of_demo_definitions():
    r, problems = parse(DEMO)
    assert problems == []
    list_id = uuid.uuid4()
    row = {"id": uuid.uuid4(), "list_id": list_id, "description": "milk", "completed": True,
           "created_by": "u1", "created_at": None, "completed_at": None}
    [(bucket, table, object_id, data)] = r.row_buckets("todos.todo", row, 1)
    assert bucket == f'1#todos_by_list["{list_id}"]'
    assert table == "todos"
    assert object_id == str(row["id"])
    assert '"completed":1' in data and f'"list_id":"{list_id}"' in data
    assert r.row_buckets("todos.todo", None, 1) == []


@pytest.mark.django_db
def test_request_buckets_run_parameter_queryset():
    from demo_project.todos.models import TodoList

    mine = TodoList.objects.create(name="a", owner_id="u1")
    TodoList.objects.create(name="b", owner_id="u2")
    r, _ = parse(DEMO)
    got = r.request_buckets({"sub": "u1"}, {}, 2)
    assert got == {f'2#todos_by_list["{mine.id}"]': ("todos_by_list", 3)}


def test_static_filters_and_global_bucket():
    r, problems = parse({
        "open": {"data": [{"model": "todos.Todo", "table": "open_todos", "filter": {"completed": False},
                           "fields": ["id", "description"]}], "priority": 1},
    })
    assert problems == []
    row = {"id": uuid.uuid4(), "description": "x", "completed": False}
    [(bucket, table, _, data)] = r.row_buckets("todos.todo", row, 0)
    assert (bucket, table) == ("open[]", "open_todos")
    assert data == '{"id":"' + str(row["id"]) + '","description":"x"}'
    assert r.row_buckets("todos.todo", {**row, "completed": True}, 0) == []
    assert r.request_buckets({"sub": "x"}, {}, 0) == {"open[]": ("open", 1)}


@pytest.mark.parametrize(
    ("buckets", "code"),
    [
        ({"a": {"data": ["todos.Nope"]}}, "E002"),
        ({"a": {"data": [{"model": "todos.Todo", "filter": {"list__owner_id": "x"}}]}}, "E004"),
        ({"a": {"data": [{"model": "todos.Todo", "filter": {"list_id": "token.sub"}}]}}, "E004"),
        ({"a": {"data": ["todos.Todo"], "priority": 7}}, "E007"),
        ({"a": {"parameters": {"x": "token.sub"}, "data": ["todos.Todo"]}}, "E008"),
        ({"a": {"data": [{"model": "todos.Todo", "fields": ["nope"]}]}}, "E005"),
        ({"a": {"data": [{"model": "todos.Todo", "table": "t"}]},
          "b": {"data": [{"model": "todos.TodoList", "table": "t"}]}}, "E009"),
        ({"a": {"parameters": {"queryset": "todos.TodoList", "filter": {"nope": "token.sub"},
                               "values": {"x": "id"}}, "data": ["todos.Todo"]}}, "E006"),
    ],
)
def test_invalid_definitions_are_reported_by_system_checks(buckets, code):
    with override_settings(POWERSYNC={"BUCKETS": buckets, "JWT": {"SECRET": "s"}}):
        ids = [m.id for m in checks.run_checks(tags=["powersync"])]
    assert f"powersync_django.{code}" in ids


def test_valid_settings_pass_checks():
    assert [m for m in checks.run_checks(tags=["powersync"])] == []


@pytest.mark.parametrize("key", ["KEEPALIVE_SECONDS", "POLL_INTERVAL", "LEASE_SECONDS"])
@pytest.mark.parametrize("value", [0, -1, "20", None, True])
def test_intervals_that_are_not_positive_numbers_are_reported(key, value):
    """A keepalive interval of 0 made every stream send keepalives without pause."""
    from django.conf import settings

    with override_settings(POWERSYNC={**settings.POWERSYNC, key: value}):
        messages = checks.run_checks(tags=["powersync"])
    assert [m.id for m in messages] == ["powersync_django.E022"]
    assert key in messages[0].msg


def test_bad_upload_hook_path_is_reported_by_system_checks():
    from django.conf import settings

    config = {**settings.POWERSYNC, "UPLOAD": {"PERMISSIONS": {"todos": "nowhere.missing_hook"}}}
    with override_settings(POWERSYNC=config):
        messages = checks.run_checks(tags=["powersync"])
    assert [m.id for m in messages] == ["powersync_django.E012"]
    assert "nowhere.missing_hook" in messages[0].msg


def test_parameter_reads_are_targeted_at_the_compared_column():
    r, _ = parse(DEMO)
    watch = r.watched["todos.todolist"]
    assert (watch.untargeted, list(watch.fields)) == (False, ["owner_id"])
    assert r.change_keys("todos.todolist", '{"id": "x", "owner_id": "u1"}') == ["todos.todolist|owner_id=u1"]
    moved = '{"id": "x", "owner_id": "u2", "__powersync_old__": {"owner_id": "u1"}}'
    assert r.change_keys("todos.todolist", moved) == ["todos.todolist|owner_id=u2", "todos.todolist|owner_id=u1"]
    assert r.change_keys("todos.todo", '{"id": "x"}') == []  # only synced, never decides access
    assert r.stream_keys({"sub": "u1"}, {}) == {"todos.todolist", "todos.todolist|owner_id=u1"}
