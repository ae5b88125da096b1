"""A workspace app with the shapes real projects have (see the package docstring of ``schema_project``)."""

import uuid

from django.conf import settings
from django.db import models

ON_POSTGRES = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


class Team(models.Model):
    """Not synced itself: parameter querysets read it (and its memberships) to decide access."""

    name = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """ACL table: read only by parameter querysets."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, default="member")

    class Meta:
        unique_together = [("team", "user")]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.team_id}"


class Project(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    lead = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")

    def __str__(self) -> str:
        return self.name


class Task(Project):
    """Multi-table inheritance: the Project part lives in the parent table."""

    done = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.name


class Folder(models.Model):
    """Shared through an explicit through model."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.CharField(max_length=100)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="FolderMember", related_name="folders")

    def __str__(self) -> str:
        return self.name


class FolderMember(models.Model):
    folder = models.ForeignKey(Folder, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    can_edit = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"{self.user_id} in {self.folder_id}"


def _default_tags() -> list:
    return []


class Document(models.Model):
    """Every common field type, owned by an ``auth.User`` (integer key), in a folder that may be deleted."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="documents")
    folder = models.ForeignKey(Folder, null=True, blank=True, on_delete=models.SET_NULL, related_name="documents")
    shared_with = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="shared_documents")
    title = models.CharField(max_length=200)
    body = models.JSONField(default=dict, blank=True)
    price = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    due = models.DateField(null=True, blank=True)
    remind_at = models.TimeField(null=True, blank=True)
    attachment = models.BinaryField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    duration = models.DurationField(null=True, blank=True)
    rating = models.FloatField(null=True, blank=True)
    pages = models.PositiveIntegerField(default=0)
    archived = models.BooleanField(default=False)
    ref = models.UUIDField(null=True, blank=True)
    if ON_POSTGRES:
        from django.contrib.postgres.fields import ArrayField

        tags = ArrayField(models.CharField(max_length=50), default=_default_tags, blank=True)

    def __str__(self) -> str:
        return self.title


class Specimen(models.Model):
    """One nullable column of every built-in field type (and the contrib.postgres ones on PostgreSQL): the
    value-encoding round trip tests (tests/schema/test_values.py) sync and upload it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    char = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001 (null and "" both tested)
    text = models.TextField(null=True, blank=True)  # noqa: DJ001 (null and "" both tested)
    slug = models.SlugField(null=True, blank=True)  # noqa: DJ001 (null and "" both tested)
    email = models.EmailField(null=True, blank=True)  # noqa: DJ001 (null and "" both tested)
    url = models.URLField(null=True, blank=True)  # noqa: DJ001 (null and "" both tested)
    ip = models.GenericIPAddressField(null=True, blank=True)
    uuid = models.UUIDField(null=True, blank=True)
    flag = models.BooleanField(null=True, blank=True)
    small = models.SmallIntegerField(null=True, blank=True)
    integer = models.IntegerField(null=True, blank=True)
    big = models.BigIntegerField(null=True, blank=True)
    positive_small = models.PositiveSmallIntegerField(null=True, blank=True)
    positive = models.PositiveIntegerField(null=True, blank=True)
    positive_big = models.PositiveBigIntegerField(null=True, blank=True)
    real = models.FloatField(null=True, blank=True)
    amount = models.DecimalField(max_digits=12, decimal_places=3, null=True, blank=True)
    day = models.DateField(null=True, blank=True)
    clock = models.TimeField(null=True, blank=True)
    moment = models.DateTimeField(null=True, blank=True)
    span = models.DurationField(null=True, blank=True)
    data = models.JSONField(null=True, blank=True)
    blob = models.BinaryField(null=True, blank=True, editable=True)
    if ON_POSTGRES:
        from django.contrib.postgres import fields as pg

        numbers = pg.ArrayField(models.IntegerField(), null=True, blank=True)
        words = pg.ArrayField(models.CharField(max_length=20, null=True, blank=True), null=True, blank=True)
        moments = pg.ArrayField(models.DateTimeField(null=True), null=True, blank=True)
        grid = pg.ArrayField(pg.ArrayField(models.DecimalField(max_digits=6, decimal_places=2)), null=True,
                             blank=True)
        attrs = pg.HStoreField(null=True, blank=True)
        int_range = pg.IntegerRangeField(null=True, blank=True)
        big_range = pg.BigIntegerRangeField(null=True, blank=True)
        decimal_range = pg.DecimalRangeField(null=True, blank=True)
        day_range = pg.DateRangeField(null=True, blank=True)
        moment_range = pg.DateTimeRangeField(null=True, blank=True)

    def __str__(self) -> str:
        return str(self.id)


class Label(models.Model):
    """Free-text keys: a primary key and a bucket parameter longer than any bounded column (1,000+ chars)."""

    key = models.CharField(max_length=5000, primary_key=True)
    name = models.TextField()

    def __str__(self) -> str:
        return self.key[:50]
