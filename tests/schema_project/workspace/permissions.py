"""Upload rules of the second test project: write your own documents; projects of your teams."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .models import Document, Membership, Project


def _user_pk(user: Any) -> str:
    return str(getattr(user, "user_id", None) or getattr(user, "pk", ""))


def can_write_document(user: Any, op: str, instance: Document | None, data: Mapping[str, Any]) -> bool:
    if instance is not None and str(instance.owner_id) != _user_pk(user):
        return False
    owner = data.get("owner") or data.get("owner_id")
    return owner is None or str(getattr(owner, "pk", owner)) == _user_pk(user)


def can_write_project(user: Any, op: str, instance: Project | None, data: Mapping[str, Any]) -> bool:
    team = data.get("team") or data.get("team_id") or (instance.team_id if instance else None)
    team_id = getattr(team, "pk", team)
    return Membership.objects.filter(team_id=team_id, user_id=_user_pk(user)).exists()
