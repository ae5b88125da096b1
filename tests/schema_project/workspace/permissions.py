"""Upload rules of the second test project: write your own documents; projects of your teams.

Hooks get the Django user named by the token's ``sub`` (``UPLOAD['USER_LOOKUP_FIELD']`` defaults to the
primary key), so integer foreign keys to ``auth.User`` compare directly with ``user.pk``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.contrib.auth.models import User

from .models import Document, Membership, Project


def can_write_document(user: User, op: str, instance: Document | None, data: Mapping[str, Any]) -> bool:
    if instance is not None and instance.owner_id != user.pk:
        return False
    return data.get("owner_id", user.pk) == user.pk


def can_write_project(user: User, op: str, instance: Project | None, data: Mapping[str, Any]) -> bool:
    team_id = data.get("team_id") or (instance.team_id if instance else None)
    return Membership.objects.filter(team_id=team_id, user=user).exists()
