"""Capture of what decides access and of Django's silent writes, on the realistic schema (issue #9).

Every model on a parameter queryset's lookup path writes outbox entries (ACL table, explicit and
auto-created through tables, queryset models); many-to-many changes, on_delete=SET_NULL, multi-table
inheritance and bulk_create(ignore_conflicts=True) are captured; the replicator lists change keys in the
checkpoint's changed_models.
"""

from __future__ import annotations

import orjson
import pytest
from django.contrib.auth.models import User
from schema_project.workspace.models import Document, Folder, FolderMember, Membership, Project, Task, Team

from powersync_django.capture import PowerSyncQuerySet, record_changed
from powersync_django.models import Checkpoint, OutboxEntry
from powersync_django.replication import replicate_now
from powersync_django.rules import OLD_VALUES, get_rules

pytestmark = pytest.mark.django_db(transaction=True)

THROUGH = "workspace.document_shared_with"


def entries(model: str | None = None) -> list[tuple[str, str, str]]:
    qs = OutboxEntry.objects.order_by("id")
    if model:
        qs = qs.filter(model=model)
    return [(e.model, e.object_pk, e.op) for e in qs]


def snapshots(model: str) -> list[dict | None]:
    return [orjson.loads(e.snapshot) if e.snapshot else None
            for e in OutboxEntry.objects.filter(model=model).order_by("id")]


def changed_models() -> list[str]:
    """changed_models of the checkpoint that replicating everything pending commits."""
    replicate_now()
    return orjson.loads(Checkpoint.objects.latest("id").changed_models)


@pytest.fixture
def people():
    alice, bob = User.objects.create(username="alice"), User.objects.create(username="bob")
    replicate_now()
    return alice, bob


# --- what the rules read ---------------------------------------------------------------------------


def test_parameter_models_include_every_model_on_the_lookup_paths():
    rules = get_rules()
    assert {"workspace.membership", "workspace.team", "workspace.folder", "workspace.foldermember",
            THROUGH, "workspace.document", "auth.user"} <= rules.parameter_models
    assert rules.parameter_models <= rules.captured_labels


def test_targets_and_quiet_models():
    watched = get_rules().watched
    # ACL rows concern the streams of their user only.
    for label in ("workspace.membership", "workspace.foldermember", THROUGH):
        assert (watched[label].untargeted, list(watched[label].fields)) == (False, ["user_id"]), label
    # Read only by primary key in inner joins: their rows matter through the rows pointing at them.
    for label in ("workspace.team", "workspace.folder", "auth.user"):
        assert (watched[label].untargeted, list(watched[label].fields)) == (False, []), label
    # The `document` stream filters documents by owner (the token) and id (the subscription): a document's
    # change concerns the streams of its owners before and after, and those subscribed to it.
    assert (watched["workspace.document"].untargeted, sorted(watched["workspace.document"].fields)) == (
        False, ["id", "owner_id"])


def test_a_filter_on_the_queryset_models_own_column_makes_it_untargeted(settings):
    buckets = dict(settings.POWERSYNC["BUCKETS"])
    buckets["team_projects"] = {**buckets["team_projects"], "parameters": {
        "queryset": "workspace.Team", "filter": {"memberships__user_id": "token.sub", "name__startswith": "a"},
        "values": {"team_id": "id"}}}
    settings.POWERSYNC = {**settings.POWERSYNC, "BUCKETS": buckets}
    watched = get_rules().watched
    assert watched["workspace.team"].untargeted
    assert get_rules().change_keys("workspace.team", '{"id": 1, "name": "x"}') == ["workspace.team"]


# --- ACL rows ----------------------------------------------------------------------------------------


def test_acl_rows_are_captured_with_their_values_deletes_included(people):
    alice, bob = people
    team = Team.objects.create(name="t")
    m = Membership.objects.create(team=team, user=alice)
    assert entries("workspace.membership") == [("workspace.membership", str(m.pk), "S")]
    assert changed_models() == [f"workspace.membership|user_id={alice.pk}"]
    m.user = bob
    m.save()
    [snap] = snapshots("workspace.membership")
    assert snap["user_id"] == bob.pk and snap[OLD_VALUES] == {"user_id": alice.pk}
    # Both the user who lost the row and the one who gained it re-evaluate.
    assert changed_models() == sorted([f"workspace.membership|user_id={alice.pk}",
                                       f"workspace.membership|user_id={bob.pk}"])
    m.role = "admin"
    m.save()
    assert OLD_VALUES not in snapshots("workspace.membership")[0]  # user unchanged: no earlier values
    assert changed_models() == [f"workspace.membership|user_id={bob.pk}"]
    pk = m.pk
    m.delete()
    assert entries() == [("workspace.membership", str(pk), "D")]
    assert snapshots("workspace.membership")[0]["user_id"] == bob.pk
    assert changed_models() == [f"workspace.membership|user_id={bob.pk}"]


def test_cascaded_acl_deletes_are_captured(people):
    alice, bob = people
    team = Team.objects.create(name="t")
    Membership.objects.create(team=team, user=alice)
    Membership.objects.create(team=team, user=bob)
    replicate_now()
    pk = team.pk
    team.delete()
    assert sorted(op for _, _, op in entries("workspace.membership")) == ["D", "D"]
    assert ("workspace.team", str(pk), "D") in entries()
    # The team itself is quiet: only the memberships say whose access changed.
    assert changed_models() == sorted(f"workspace.membership|user_id={u.pk}" for u in (alice, bob))


def test_queryset_models_are_captured_but_quiet(people):
    team = Team.objects.create(name="t")
    folder = Folder.objects.create(name="f")
    assert entries() == [("workspace.team", str(team.pk), "S"), ("workspace.folder", str(folder.pk), "S")]
    assert changed_models() == []


def test_bulk_update_and_raw_changes_of_acl_rows(people):
    alice, bob = people
    team = Team.objects.create(name="t")
    m = Membership.objects.create(team=team, user=alice)
    replicate_now()
    PowerSyncQuerySet(Membership).filter(pk=m.pk).update(user=bob)
    assert snapshots("workspace.membership")[0][OLD_VALUES] == {"user_id": alice.pk}
    assert changed_models() == sorted([f"workspace.membership|user_id={alice.pk}",
                                       f"workspace.membership|user_id={bob.pk}"])
    m.user = alice
    PowerSyncQuerySet(Membership).bulk_update([m], ["user"])
    assert snapshots("workspace.membership")[0][OLD_VALUES] == {"user_id": bob.pk}
    assert len(changed_models()) == 2
    # After raw SQL the earlier values are unknown: every stream re-evaluates.
    Membership.objects.filter(pk=m.pk).update(user=bob)
    record_changed(Membership, [m.pk])
    assert snapshots("workspace.membership")[0][OLD_VALUES] is None
    assert changed_models() == ["workspace.membership"]


# --- many-to-many ------------------------------------------------------------------------------------


def test_auto_created_m2m_add_remove_set_clear_both_directions(people):
    alice, bob = people
    doc = Document.objects.create(owner=alice, title="d")
    other = Document.objects.create(owner=alice, title="e")
    replicate_now()
    doc.shared_with.add(alice, bob)
    assert sorted(op for _, _, op in entries(THROUGH)) == ["S", "S"]
    assert sorted(s["user_id"] for s in snapshots(THROUGH)) == sorted([alice.pk, bob.pk])
    assert changed_models() == sorted(f"{THROUGH}|user_id={u.pk}" for u in (alice, bob))
    doc.shared_with.add(bob)  # already there: nothing inserted, nothing recorded
    assert entries() == []
    doc.shared_with.remove(bob)
    assert [op for _, _, op in entries(THROUGH)] == ["D"]
    assert snapshots(THROUGH)[0]["user_id"] == bob.pk
    assert changed_models() == [f"{THROUGH}|user_id={bob.pk}"]
    bob.shared_documents.add(doc, other)  # reverse accessor
    assert sorted(s["document_id"] for s in snapshots(THROUGH)) == sorted([str(doc.pk), str(other.pk)])
    assert changed_models() == [f"{THROUGH}|user_id={bob.pk}"]
    bob.shared_documents.remove(other)
    assert [(s["document_id"], s["user_id"]) for s in snapshots(THROUGH)] == [(str(other.pk), bob.pk)]
    replicate_now()
    doc.shared_with.set([bob])  # removes alice, keeps bob
    assert [(op, s["user_id"]) for (_, _, op), s in zip(entries(THROUGH), snapshots(THROUGH), strict=True)] == [
        ("D", alice.pk)]
    replicate_now()
    doc.shared_with.clear()
    assert [(op, s["user_id"]) for (_, _, op), s in zip(entries(THROUGH), snapshots(THROUGH), strict=True)] == [
        ("D", bob.pk)]
    assert changed_models() == [f"{THROUGH}|user_id={bob.pk}"]
    bob.shared_documents.add(doc)
    replicate_now()
    bob.shared_documents.clear()  # reverse clear
    assert [op for _, _, op in entries(THROUGH)] == ["D"]
    assert changed_models() == [f"{THROUGH}|user_id={bob.pk}"]


def test_cascades_into_the_auto_created_table_are_captured(people):
    alice, bob = people
    doc = Document.objects.create(owner=alice, title="d")
    kept = Document.objects.create(owner=alice, title="kept")
    doc.shared_with.add(alice, bob)
    kept.shared_with.add(bob)
    replicate_now()
    doc_pk = str(doc.pk)
    doc.delete()  # Django deletes its through rows without signals
    gone = [(op, s["document_id"], s["user_id"]) for (_, _, op), s in zip(entries(THROUGH), snapshots(THROUGH),
                                                                          strict=True)]
    assert sorted(gone) == sorted([("D", doc_pk, alice.pk), ("D", doc_pk, bob.pk)])
    assert changed_models() == sorted([*(f"{THROUGH}|user_id={u.pk}" for u in (alice, bob)),
                                       f"workspace.document|id={doc_pk}", f"workspace.document|owner_id={alice.pk}"])
    bob.delete()
    assert [(op, s["document_id"]) for (_, _, op), s in zip(entries(THROUGH), snapshots(THROUGH), strict=True)] == [
        ("D", str(kept.pk))]


def test_explicit_through_model_writes_are_captured(people):
    alice, bob = people
    folder = Folder.objects.create(name="f")
    replicate_now()
    FolderMember.objects.create(folder=folder, user=alice)
    folder.members.add(bob, through_defaults={"can_edit": True})
    assert [op for _, _, op in entries("workspace.foldermember")] == ["S", "S"]
    assert changed_models() == sorted(f"workspace.foldermember|user_id={u.pk}" for u in (alice, bob))
    alice.folders.remove(folder)
    assert [op for _, _, op in entries("workspace.foldermember")] == ["D"]
    assert changed_models() == [f"workspace.foldermember|user_id={alice.pk}"]


def test_rolled_back_m2m_change_leaves_no_entry(people):
    from django.db import transaction

    alice, _ = people
    doc = Document.objects.create(owner=alice, title="d")
    replicate_now()
    with pytest.raises(RuntimeError), transaction.atomic():
        doc.shared_with.add(alice)
        raise RuntimeError
    assert entries() == []


# --- Django's silent writes ----------------------------------------------------------------------------


def test_set_null_on_delete_records_the_updated_rows(people):
    alice, bob = people
    folder = Folder.objects.create(name="f")
    team = Team.objects.create(name="t")
    docs = [Document.objects.create(owner=alice, title=str(i), folder=folder) for i in range(2)]
    project = Project.objects.create(team=team, name="p", lead=bob)
    task = Task.objects.create(team=team, name="t", lead=bob)
    replicate_now()
    folder.delete()
    got = [(m, pk, op) for m, pk, op in entries() if m == "workspace.document"]
    assert sorted(got) == sorted(("workspace.document", str(d.pk), "S") for d in docs)
    assert all(s["folder_id"] is None for s in snapshots("workspace.document"))
    replicate_now()
    bob.delete()  # Project.lead and the Task's inherited lead: SET_NULL
    assert sorted(pk for m, pk, op in entries() if m == "workspace.project" and op == "S") == sorted(
        [str(project.pk), str(task.pk)])
    assert [pk for m, pk, op in entries() if m == "workspace.task"] == [str(task.pk)]
    assert all(s["lead_id"] is None for s in snapshots("workspace.project") + snapshots("workspace.task"))


def test_set_null_changes_reach_the_buckets(people):
    from powersync_django.models import RowBuckets

    alice, _ = people
    folder = Folder.objects.create(name="f")
    FolderMember.objects.create(folder=folder, user=alice)
    doc = Document.objects.create(owner=alice, title="d", folder=folder)
    replicate_now()
    buckets = orjson.loads(RowBuckets.objects.get(source=f"workspace.document:{doc.pk}").buckets)
    assert any(b.startswith(f'1#folder_documents["{folder.pk}"]') for b, _, _ in buckets)
    folder.delete()
    replicate_now()
    buckets = orjson.loads(RowBuckets.objects.get(source=f"workspace.document:{doc.pk}").buckets)
    assert not any("folder_documents" in b for b, _, _ in buckets)


def test_multi_table_inheritance_records_both_tables(people):
    team = Team.objects.create(name="t")
    plain = Project.objects.create(team=team, name="plain")
    replicate_now()
    task = Task.objects.create(team=team, name="task")
    assert sorted(entries()) == sorted([("workspace.task", str(task.pk), "S"), ("workspace.project", str(task.pk), "S")])
    replicate_now()
    # Saving the parent alone changes the child's row (it holds the parent's fields).
    parent = Project.objects.get(pk=task.pk)
    parent.name = "renamed"
    parent.save()
    assert sorted(entries()) == sorted([("workspace.project", str(task.pk), "S"), ("workspace.task", str(task.pk), "S")])
    assert snapshots("workspace.task")[0]["name"] == "renamed"
    replicate_now()
    plain.name = "x"
    plain.save()
    assert entries() == [("workspace.project", str(plain.pk), "S")]
    replicate_now()
    task.done = True
    task.save(update_fields=["done"])
    assert sorted(entries()) == sorted([("workspace.task", str(task.pk), "S"), ("workspace.project", str(task.pk), "S")])
    replicate_now()
    pk = task.pk
    task.delete()
    assert sorted(entries()) == sorted([("workspace.task", str(pk), "D"), ("workspace.project", str(pk), "D")])


def test_multi_table_inheritance_reaches_both_buckets(people):
    from powersync_django.models import RowBuckets

    alice, _ = people
    team = Team.objects.create(name="t")
    Membership.objects.create(team=team, user=alice)
    task = Task.objects.create(team=team, name="task")
    replicate_now()
    parent = Project.objects.get(pk=task.pk)
    parent.name = "renamed"
    parent.save()
    replicate_now()
    for label in ("workspace.task", "workspace.project"):
        [(bucket, _, _)] = orjson.loads(RowBuckets.objects.get(source=f"{label}:{task.pk}").buckets)
        from powersync_django.models import BucketOp

        last = BucketOp.objects.filter(bucket=bucket, object_id=str(task.pk)).latest("op_id")
        assert orjson.loads(last.data)["name"] == "renamed", label


def test_bulk_create_ignore_conflicts_with_database_keys(people):
    alice, bob = people
    team = Team.objects.create(name="t")
    existing = Membership.objects.create(team=team, user=alice)
    replicate_now()
    created = PowerSyncQuerySet(Membership).bulk_create(
        [Membership(team=team, user=alice), Membership(team=team, user=bob)], ignore_conflicts=True)
    assert len(created) == 2
    new = Membership.objects.get(user=bob)
    assert entries("workspace.membership") == [("workspace.membership", str(new.pk), "S")]
    assert existing.pk != new.pk
    assert changed_models() == [f"workspace.membership|user_id={bob.pk}"]


def test_bulk_create_of_parameter_rows_is_targeted(people):
    alice, bob = people
    teams = PowerSyncQuerySet(Team).bulk_create([Team(name="a"), Team(name="b")])
    PowerSyncQuerySet(Membership).bulk_create([Membership(team=teams[0], user=alice),
                                               Membership(team=teams[1], user=bob)])
    assert len(entries("workspace.team")) == 2
    assert changed_models() == sorted(f"workspace.membership|user_id={u.pk}" for u in (alice, bob))


def test_many_change_keys_collapse_into_the_model_label():
    users = PowerSyncQuerySet(User).bulk_create([User(username=f"u{i}") for i in range(510)])
    team = Team.objects.create(name="t")
    replicate_now()
    PowerSyncQuerySet(Membership).bulk_create([Membership(team=team, user=u) for u in users])
    assert changed_models() == ["workspace.membership"]


def test_conflict_candidates_are_found_by_unique_fields(people):
    """Keys the database assigns and does not return (not integers): the rows matching the objects'
    unique fields are recorded, inserted ones and conflicting ones alike."""
    from powersync_django.capture import _conflict_candidates

    alice, bob = people
    team = Team.objects.create(name="t")
    existing = Membership.objects.create(team=team, user=alice)
    objs = [Membership(team=team, user=alice), Membership(team=team, user=bob)]
    candidates = _conflict_candidates(PowerSyncQuerySet(Membership), objs)
    Membership.objects.bulk_create(objs, ignore_conflicts=True)
    assert sorted(candidates.values_list("pk", flat=True)) == sorted(
        [existing.pk, Membership.objects.get(user=bob).pk])
    with pytest.raises(TypeError, match="cannot tell which"):
        _conflict_candidates(PowerSyncQuerySet(Team), [Team(name="x")])


@pytest.mark.parametrize(("parameters", "expected"), [
    # The queryset model's own column compared with the token: targeted on it.
    ({"queryset": "workspace.Document", "filter": {"owner_id": "token.sub"}, "values": {"p": "id"}},
     {"workspace.document": ["owner_id"]}),
    # A forward foreign key walked to the user: the key column is targeted, the user row is quiet.
    ({"queryset": "workspace.Membership", "filter": {"user__id": "token.sub"}, "values": {"p": "team_id"}},
     {"workspace.membership": ["user_id"], "auth.user": "quiet"}),
    # A lookup other than equality: untargeted.
    ({"queryset": "workspace.Team", "filter": {"memberships__user__username__iexact": "token.name"},
      "values": {"p": "id"}},
     {"workspace.team": "untargeted", "workspace.membership": "untargeted", "auth.user": "untargeted"}),
    # Values read through the joined ACL row (same join): still targeted.
    ({"queryset": "workspace.Team", "filter": {"memberships__user_id": "token.sub"},
      "values": {"p": "memberships__role"}},
     {"workspace.team": "quiet", "workspace.membership": ["user_id"]}),
    # Multi-table inheritance: the parent's table is read too.
    ({"queryset": "workspace.Task", "filter": {"team__memberships__user_id": "token.sub"}, "values": {"p": "name"}},
     {"workspace.task": "quiet", "workspace.project": "untargeted", "workspace.team": "quiet",
      "workspace.membership": ["user_id"]}),
])
def test_lookup_path_analysis(parameters, expected):
    from powersync_django import rules as rules_module

    parsed, problems = rules_module.parse({"BUCKETS": {"b": {
        "parameters": parameters,
        "data": [{"model": "workspace.Project", "filter": {"name": "bucket.p"}}]}}})
    assert parsed is not None, problems
    got = {}
    for label, w in parsed.watched.items():
        got[label] = "untargeted" if w.untargeted else (list(w.fields) or "quiet")
    assert got == expected
