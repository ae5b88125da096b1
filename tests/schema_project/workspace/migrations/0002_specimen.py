import uuid

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("workspace", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="Specimen",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, primary_key=True, serialize=False)),
                ("char", models.CharField(blank=True, max_length=100, null=True)),
                ("text", models.TextField(blank=True, null=True)),
                ("slug", models.SlugField(blank=True, null=True)),
                ("email", models.EmailField(blank=True, max_length=254, null=True)),
                ("url", models.URLField(blank=True, null=True)),
                ("ip", models.GenericIPAddressField(blank=True, null=True)),
                ("uuid", models.UUIDField(blank=True, null=True)),
                ("flag", models.BooleanField(blank=True, null=True)),
                ("small", models.SmallIntegerField(blank=True, null=True)),
                ("integer", models.IntegerField(blank=True, null=True)),
                ("big", models.BigIntegerField(blank=True, null=True)),
                ("positive_small", models.PositiveSmallIntegerField(blank=True, null=True)),
                ("positive", models.PositiveIntegerField(blank=True, null=True)),
                ("positive_big", models.PositiveBigIntegerField(blank=True, null=True)),
                ("real", models.FloatField(blank=True, null=True)),
                ("amount", models.DecimalField(blank=True, decimal_places=3, max_digits=12, null=True)),
                ("day", models.DateField(blank=True, null=True)),
                ("clock", models.TimeField(blank=True, null=True)),
                ("moment", models.DateTimeField(blank=True, null=True)),
                ("span", models.DurationField(blank=True, null=True)),
                ("data", models.JSONField(blank=True, null=True)),
                ("blob", models.BinaryField(blank=True, editable=True, null=True)),
            ],
        ),
    ]


if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
    from django.contrib.postgres import fields as pg
    from django.contrib.postgres.operations import HStoreExtension

    # The model declares these fields only on PostgreSQL; so does its migration.
    Migration.operations[:0] = [HStoreExtension()]
    Migration.operations += [
        migrations.AddField("specimen", "numbers", pg.ArrayField(models.IntegerField(), blank=True, null=True)),
        migrations.AddField("specimen", "words", pg.ArrayField(models.CharField(max_length=20, null=True, blank=True), blank=True,
                                                              null=True)),
        migrations.AddField("specimen", "moments",
                            pg.ArrayField(models.DateTimeField(null=True), blank=True, null=True)),
        migrations.AddField("specimen", "grid", pg.ArrayField(pg.ArrayField(
            models.DecimalField(decimal_places=2, max_digits=6)), blank=True, null=True)),
        migrations.AddField("specimen", "attrs", pg.HStoreField(blank=True, null=True)),
        migrations.AddField("specimen", "int_range", pg.IntegerRangeField(blank=True, null=True)),
        migrations.AddField("specimen", "big_range", pg.BigIntegerRangeField(blank=True, null=True)),
        migrations.AddField("specimen", "decimal_range", pg.DecimalRangeField(blank=True, null=True)),
        migrations.AddField("specimen", "day_range", pg.DateRangeField(blank=True, null=True)),
        migrations.AddField("specimen", "moment_range", pg.DateTimeRangeField(blank=True, null=True)),
    ]
