"""powersync_django.testing: an application's own tests ask what a user's client would hold."""

import pytest
from django.contrib.auth.models import User

from demo_project.todos.models import Todo, TodoList
from powersync_django.testing import sync

pytestmark = pytest.mark.django_db  # not transactional: sync() must see this test's open transaction


def test_sync_returns_the_rows_a_client_holds():
    mine = TodoList.objects.create(name="mine", owner_id="u1")
    theirs = TodoList.objects.create(name="theirs", owner_id="u2")
    todo = Todo.objects.create(list=mine, description="milk")
    Todo.objects.create(list=theirs, description="secret")
    result = sync(sub="u1")
    result.assert_can_see("lists", mine.pk)
    result.assert_cannot_see("lists", theirs.pk)
    assert [t["description"] for t in result.rows("todos")] == ["milk"]
    assert result.rows("todos")[0] == {**result.rows("todos")[0], "id": str(todo.pk), "list_id": str(mine.pk),
                                       "completed": 0}
    assert result.checkpoint > 0 and any("todos_by_list" in b for b in result.buckets)


def test_changes_and_deletes_are_reflected():
    lst = TodoList.objects.create(name="l", owner_id="u1")
    todo = Todo.objects.create(list=lst, description="old")
    assert sync(sub="u1").has_row("todos", todo.pk)
    todo.description = "new"
    todo.save()
    assert sync(sub="u1").rows("todos")[0]["description"] == "new"
    todo.delete()
    result = sync(sub="u1")
    result.assert_cannot_see("todos", todo.pk)
    result.assert_can_see("lists", lst.pk)


def test_stream_subscription():
    lst = TodoList.objects.create(name="l", owner_id="u1")
    Todo.objects.create(list=lst, description="t")
    other = TodoList.objects.create(name="x", owner_id="u2")
    result = sync(sub="u1", include_defaults=False,
                  subscriptions=[{"stream": "list_todos", "parameters": {"list_id": str(lst.pk)}},
                                 {"stream": "list_todos", "parameters": {"list_id": str(other.pk)}}])
    assert [t["description"] for t in result.rows("todos")] == ["t"]
    assert result.rows("lists") == []  # include_defaults=False: not even the auto-subscribed lists stream
    (entry,) = [s for s in result.streams if s["name"] == "list_todos"]
    assert [e["subscription"] for e in entry["errors"]] == [1]


def test_a_django_user_syncs_as_its_primary_key():
    user = User.objects.create(username="ann")
    lst = TodoList.objects.create(name="l", owner_id=str(user.pk))
    sync(user).assert_can_see("lists", lst.pk)
    with pytest.raises(TypeError):
        sync(user, sub="x")
