"""powersync_django.testing on the realistic schema: ACL memberships, M2M shares, integer user keys."""

import pytest
from django.contrib.auth.models import User
from schema_project.workspace.models import Document, Membership, Project, Team

from powersync_django.testing import sync

pytestmark = pytest.mark.django_db


def test_membership_decides_what_a_user_syncs():
    alice, bob = User.objects.create(username="alice"), User.objects.create(username="bob")
    team = Team.objects.create(name="t")
    Membership.objects.create(team=team, user=alice)
    project = Project.objects.create(team=team, name="plan")
    owned = Document.objects.create(owner=alice, title="mine")
    shared = Document.objects.create(owner=bob, title="shared")
    shared.shared_with.add(alice)
    result = sync(alice)
    result.assert_can_see("projects", project.pk)
    result.assert_can_see("documents", owned.pk)
    result.assert_can_see("documents", shared.pk)
    assert result.rows("documents")[0]["owner_id"] in (alice.pk, bob.pk)
    result = sync(bob)
    result.assert_cannot_see("projects", project.pk)
    result.assert_cannot_see("documents", owned.pk)
    Membership.objects.filter(user=alice).delete()
    sync(alice).assert_cannot_see("projects", project.pk)
