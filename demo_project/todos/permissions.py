"""Upload rules of the demo (POWERSYNC["UPLOAD"] in settings): a user writes only their own lists and their todos.

``owner_id`` of lists and ``created_by`` of todos come from the token, never from the client. Permission
hooks get ``(user, op, instance, data)``: ``instance`` is the stored row (None when a PUT creates it),
``data`` the validated values about to be written. Prepare hooks get ``(user, op, data)`` before validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .models import Todo, TodoList


def _owns_list(user: Any, list_id: Any) -> bool:
    # Missing and foreign lists look the same: the client learns nothing about other users' lists.
    return list_id is not None and TodoList.objects.filter(pk=list_id, owner_id=user.user_id).exists()


def can_write_list(user: Any, op: str, instance: TodoList | None, data: Mapping[str, Any]) -> bool:
    """Create any list (it becomes yours); change or delete only lists you own."""
    return instance is None or instance.owner_id == user.user_id


def can_write_todo(user: Any, op: str, instance: Todo | None, data: Mapping[str, Any]) -> bool:
    """Write todos of lists you own only, and never move one into a list you do not own."""
    if instance is not None and not _owns_list(user, instance.list_id):
        return False
    return "list_id" not in data or _owns_list(user, data["list_id"])


def prepare_list(user: Any, op: str, data: dict[str, Any]) -> dict[str, Any]:
    """The owner is the uploader: set on PUT, not changeable by PATCH."""
    data.pop("owner_id", None)
    if op == "PUT":
        data["owner_id"] = user.user_id
    return data


def prepare_todo(user: Any, op: str, data: dict[str, Any]) -> dict[str, Any]:
    """The creator is the uploader: set on PUT, not changeable by PATCH."""
    data.pop("created_by", None)
    if op == "PUT":
        data["created_by"] = user.user_id
    return data
