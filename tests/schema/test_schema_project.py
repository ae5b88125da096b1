"""The second test project loads, validates and builds its buckets (the ground the other schema tests stand on)."""

import pytest
from django.contrib.auth.models import User
from django.core import checks
from schema_project.workspace.models import Document, Membership, Project, Team

from powersync_django.models import BucketState
from powersync_django.rules import get_rules

pytestmark = pytest.mark.django_db(transaction=True)


def test_checks_pass():
    errors = [m for m in checks.run_checks() if m.level >= checks.ERROR]
    assert errors == []


def test_rules_cover_the_schema():
    rules = get_rules()
    assert set(rules.definitions) == {"team_projects", "owned_documents", "folder_documents", "shared_documents",
                                      "team_tasks", "document", "team_projects_now"}
    assert "workspace.membership" in rules.parameter_models


def test_owned_documents_bucket_built(replicate):
    alice = User.objects.create(username="alice")
    Document.objects.create(owner=alice, title="hello")
    team = Team.objects.create(name="t")
    Membership.objects.create(team=team, user=alice)
    Project.objects.create(team=team, name="p")
    replicate()
    buckets = set(BucketState.objects.values_list("bucket", flat=True))
    assert any("owned_documents" in b for b in buckets)
    assert any("team_projects" in b for b in buckets)
