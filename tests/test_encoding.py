"""Value encoding for client rows (README "Value encoding") and the lossless outbox snapshot."""

from __future__ import annotations

import datetime
import decimal
import uuid
import zoneinfo

import orjson
import pytest
from django.contrib.postgres import fields as pg
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange, NumericRange
from django.test import override_settings

from powersync_django.conf import get_config
from powersync_django.encoding import (
    UnsyncableValue,
    encode_value,
    format_datetime,
    snapshot_to_python,
    snapshot_value,
)

UTC = datetime.UTC
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("value", "field", "expected"),
    [
        ("plain text", models.CharField(), "plain text"),
        ("", models.TextField(), ""),
        (uuid.UUID("6f1c2b0e-0d4e-4a4b-9a43-2f0b2d8f9c11"), models.UUIDField(), "6f1c2b0e-0d4e-4a4b-9a43-2f0b2d8f9c11"),
        (True, models.BooleanField(), 1),
        (False, models.BooleanField(), 0),
        (42, models.IntegerField(), 42),
        (-7, models.BigIntegerField(), -7),
        (1.25, models.FloatField(), 1.25),
        (datetime.date(2026, 2, 3), models.DateField(), "2026-02-03"),
        (datetime.time(7, 8, 9), models.TimeField(), "07:08:09"),
        (datetime.time(7, 8, 9, 120), models.TimeField(), "07:08:09.000120"),
        (decimal.Decimal("12.50"), models.DecimalField(max_digits=6, decimal_places=2), "12.50"),
        ({"b": 1, "a": [1, "x"]}, models.JSONField(), '{"a":[1,"x"],"b":1}'),
        ([1, 2], models.JSONField(), "[1,2]"),
        (7, models.JSONField(), "7"),
        (True, models.JSONField(), "true"),
        (b"\x00\x01hi", models.BinaryField(), "AAFoaQ=="),
        (memoryview(b"\xff"), models.BinaryField(), "/w=="),
        (datetime.timedelta(minutes=1, microseconds=500), models.DurationField(), 60.0005),
        (None, models.CharField(null=True), None),
        (None, models.JSONField(null=True), None),
        (None, models.DateTimeField(null=True), None),
    ],
)
def test_encode_value_mapping(value, field, expected):
    got = encode_value(value, field)
    assert got == expected and type(got) is type(expected)


def test_json_field_holding_a_string_is_json_text():
    # The column holds JSON text whatever the JSON value is: a string must come out quoted, like a dict does.
    assert encode_value("abc", models.JSONField()) == '"abc"'
    assert encode_value("", models.JSONField()) == '""'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # The reference service trims trailing zeros of the microseconds.
        (datetime.datetime(2026, 11, 26, 5, 44, 48, 11390, tzinfo=UTC), "2026-11-26 05:44:48.01139Z"),
        (datetime.datetime(2026, 11, 26, 5, 44, 47, 992823, tzinfo=UTC), "2026-11-26 05:44:47.992823Z"),
        (datetime.datetime(2026, 11, 26, 5, 44, 48, 100000, tzinfo=UTC), "2026-11-26 05:44:48.1Z"),
        (datetime.datetime(2026, 11, 26, 5, 44, 48, tzinfo=UTC), "2026-11-26 05:44:48Z"),
        # Aware values in another zone are converted to UTC.
        (datetime.datetime(2026, 7, 1, 12, 0, 0, 5, tzinfo=PARIS), "2026-07-01 10:00:00.000005Z"),
        # Naive values are taken as UTC.
        (datetime.datetime(2026, 1, 2, 3, 4, 5, 600), "2026-01-02 03:04:05.0006Z"),
    ],
)
def test_datetime_space_format(value, expected):
    assert get_config()["DATETIME_FORMAT"] == "space"
    assert encode_value(value, models.DateTimeField()) == expected


def test_datetime_iso_format():
    value = datetime.datetime(2026, 11, 26, 5, 44, 48, 11390, tzinfo=UTC)
    with override_settings(POWERSYNC={**get_config(), "DATETIME_FORMAT": "iso"}):
        assert encode_value(value, models.DateTimeField()) == "2026-11-26T05:44:48.011390Z"
        assert encode_value(value.replace(microsecond=0), None) == "2026-11-26T05:44:48Z"
        assert encode_value(value.astimezone(PARIS)) == "2026-11-26T05:44:48.011390Z"
    assert format_datetime(value, iso=False) == "2026-11-26 05:44:48.01139Z"


def test_encode_without_field_uses_the_python_type():
    assert encode_value(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert encode_value(decimal.Decimal("-0.5")) == "-0.5"
    assert encode_value({"k": None}) == '{"k":null}'
    assert encode_value(b"a") == "YQ=="


ROUND_TRIP = [
    (models.CharField(), "héllo"),
    (models.UUIDField(), uuid.uuid4()),
    (models.BooleanField(), True),
    (models.IntegerField(), -3),
    (models.FloatField(), 0.1),
    (models.DateTimeField(), datetime.datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC)),
    (models.DateTimeField(), datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=PARIS)),
    (models.DateField(), datetime.date(1999, 12, 31)),
    (models.TimeField(), datetime.time(23, 59, 59, 999999)),
    (models.DecimalField(max_digits=10, decimal_places=3), decimal.Decimal("-1234.567")),
    (models.JSONField(), {"nested": [1, {"x": None}], "s": "t"}),
    (models.JSONField(), "just a string"),
    (models.JSONField(), None),
    (models.BinaryField(), b"\x00\xffbinary"),
    (models.DurationField(), datetime.timedelta(days=2, seconds=3, microseconds=4)),
    (models.DurationField(), datetime.timedelta.max),
    (models.DurationField(), -datetime.timedelta(days=999999, microseconds=1)),
    (models.JSONField(), {"big": 2**70, "deep": [[[[[[1.5]]]]]], "": None}),
    (models.FloatField(), -0.0),
    (models.CharField(null=True), None),
]


@pytest.mark.parametrize(("field", "value"), ROUND_TRIP)
def test_snapshot_round_trip(field, value):
    text = orjson.dumps({"v": snapshot_value(field, value)})
    back = snapshot_to_python(field, orjson.loads(text)["v"])
    if isinstance(value, bytes):
        assert bytes(back) == value
    else:
        assert back == value
    # What clients get is the same whether the value came from the instance or through the snapshot.
    assert encode_value(back, field) == encode_value(value, field)


def test_decimal_snapshot_is_quantized_like_the_database():
    # The database stores (and returns) decimal_places digits; the snapshot must say what the DB holds.
    field = models.DecimalField(max_digits=6, decimal_places=2)
    back = snapshot_to_python(field, snapshot_value(field, decimal.Decimal("1.5")))
    assert str(back) == "1.50"
    assert encode_value(back, field) == "1.50"
    back = snapshot_to_python(field, snapshot_value(field, 3))
    assert str(back) == "3.00"


def test_foreign_key_snapshot_uses_the_target_type():
    from demo_project.todos.models import Todo

    fk = Todo._meta.get_field("list")
    pk = uuid.uuid4()
    back = snapshot_to_python(fk, snapshot_value(fk, pk))
    assert back == pk and isinstance(back, uuid.UUID)
    assert encode_value(back, fk) == str(pk)


# --- field conversion APIs, contrib.postgres fields, values clients cannot hold ------------------

PG_ROUND_TRIP = [
    (pg.ArrayField(models.IntegerField()), [1, None, -3]),
    (pg.ArrayField(models.CharField(max_length=5)), ["a", "", "None", "[1]"]),
    (pg.ArrayField(models.DateTimeField()), [datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)]),
    (pg.ArrayField(pg.ArrayField(models.DecimalField(max_digits=5, decimal_places=2))),
     [[decimal.Decimal("1.50")], [decimal.Decimal("-2.00")]]),
    (pg.ArrayField(models.JSONField()), [{"a": [1]}, "s", None]),
    (pg.HStoreField(), {"k": "v", "n": None, "ü": "ß"}),
    (pg.IntegerRangeField(), NumericRange(1, 5, "[)")),
    (pg.IntegerRangeField(), NumericRange(None, 5, "()")),
    (pg.IntegerRangeField(), NumericRange(empty=True)),
    (pg.DecimalRangeField(), NumericRange(decimal.Decimal("0.5"), decimal.Decimal("1.25"), "(]")),
    (pg.DateTimeRangeField(), DateTimeTZRange(datetime.datetime(2026, 1, 1, tzinfo=UTC), None, "[)")),
]


@pytest.mark.parametrize(("field", "value"), PG_ROUND_TRIP)
def test_postgres_fields_snapshot_round_trip(field, value):
    text = orjson.dumps({"v": snapshot_value(field, value)})
    back = snapshot_to_python(field, orjson.loads(text)["v"])
    assert back == value
    assert encode_value(back, field) == encode_value(value, field)


@pytest.mark.parametrize(("field", "value", "expected"), [
    (pg.ArrayField(models.IntegerField()), [1, None], "[1,null]"),
    (pg.ArrayField(models.BooleanField()), [True, False], "[1,0]"),
    (pg.ArrayField(models.DateTimeField()), [datetime.datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=UTC)],
     '["2026-01-02 03:04:05.0006Z"]'),
    (pg.ArrayField(models.DecimalField(max_digits=5, decimal_places=2)), [decimal.Decimal("1.50")], '["1.50"]'),
    (pg.ArrayField(models.UUIDField()), [uuid.UUID(int=1)], '["00000000-0000-0000-0000-000000000001"]'),
    (pg.ArrayField(pg.ArrayField(models.IntegerField())), [[1, 2], [3, 4]], "[[1,2],[3,4]]"),
    (pg.ArrayField(models.JSONField()), [{"b": 1, "a": 2}], '["{\\"a\\":2,\\"b\\":1}"]'),
    (pg.HStoreField(), {"b": "2", "a": None}, '{"a":null,"b":"2"}'),
    (pg.IntegerRangeField(), NumericRange(1, 5, "[)"), '{"bounds":"[)","lower":1,"upper":5}'),
    (pg.IntegerRangeField(), NumericRange(empty=True), '{"empty":true}'),
    (pg.DecimalRangeField(), NumericRange(decimal.Decimal("0.5"), None, "[)"),
     '{"bounds":"[)","lower":"0.5","upper":null}'),
    (pg.DateRangeField(), DateTimeTZRange(datetime.date(2026, 1, 1), datetime.date(2026, 2, 1), "[)"),
     '{"bounds":"[)","lower":"2026-01-01","upper":"2026-02-01"}'),
])
def test_postgres_fields_client_encoding(field, value, expected):
    assert encode_value(value, field) == expected


@pytest.mark.parametrize(("field", "value", "stored"), [
    (pg.IntegerRangeField(), NumericRange(1, 5, "[]"), NumericRange(1, 6, "[)")),
    (pg.IntegerRangeField(), NumericRange(1, 5, "()"), NumericRange(2, 5, "[)")),
    (pg.IntegerRangeField(), NumericRange(3, 3, "[)"), NumericRange(empty=True)),
    (pg.IntegerRangeField(), NumericRange(None, None, "[]"), NumericRange(None, None, "()")),
    (pg.IntegerRangeField(), (1, 4), NumericRange(1, 4, "[)")),
    (pg.DecimalRangeField(), NumericRange(decimal.Decimal(1), decimal.Decimal(1), "[]"),
     NumericRange(decimal.Decimal(1), decimal.Decimal(1), "[]")),
])
def test_range_snapshot_is_what_postgresql_stores(field, value, stored):
    assert snapshot_to_python(field, snapshot_value(field, value)) == stored


def test_values_are_normalised_like_the_database_stores_them():
    # Values assigned in another type are stored converted: the snapshot says what the database holds.
    assert snapshot_to_python(models.DateField(), snapshot_value(models.DateField(), "2026-02-03")) == \
        datetime.date(2026, 2, 3)
    assert snapshot_to_python(models.UUIDField(), snapshot_value(models.UUIDField(), str(uuid.UUID(int=5)))) == \
        uuid.UUID(int=5)
    assert snapshot_value(models.BooleanField(), 1) is True
    assert snapshot_value(models.CharField(), 12) == "12"
    # Naive datetimes are taken in the default time zone, as Django stores them.
    naive = datetime.datetime(2026, 1, 1, 12)
    with override_settings(TIME_ZONE="Europe/Paris"):
        back = snapshot_to_python(models.DateTimeField(), snapshot_value(models.DateTimeField(), naive))
    assert back == datetime.datetime(2026, 1, 1, 11, tzinfo=UTC)


def test_json_snapshot_is_the_text_the_database_stores():
    field = models.JSONField(encoder=DjangoJSONEncoder)
    value = {"when": datetime.date(2026, 1, 2), 3: decimal.Decimal("1.5")}
    # What the encoder writes (and the database returns): keys as strings, the date and Decimal as text.
    assert snapshot_to_python(field, snapshot_value(field, value)) == {"when": "2026-01-02", "3": "1.5"}
    assert encode_value(snapshot_to_python(models.JSONField(), snapshot_value(models.JSONField(), {1: 2})),
                        models.JSONField()) == '{"1":2}'


def test_json_beyond_orjson_is_written_exactly():
    big = {"n": 2**70, "m": -(2**64)}
    field = models.JSONField()
    assert encode_value(snapshot_to_python(field, snapshot_value(field, big, synced=True)), field) == \
        '{"m":-18446744073709551616,"n":1180591620717411303424}'


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(("field", "value", "problem"), [
    # (Both databases refuse NaN in JSON before PowerSync sees it; this is for fields with an encoder.)
    (models.JSONField(encoder=DjangoJSONEncoder), {"x": float("nan")}, "JSON has no NaN or Infinity"),
    (models.JSONField(encoder=DjangoJSONEncoder), [1, float("inf")], "JSON has no NaN or Infinity"),
    (models.JSONField(), nested(300), "nested more than 254 levels"),
    (models.FloatField(), float("nan"), "nan is not a JSON number"),
    (models.FloatField(), float("-inf"), "-inf is not a JSON number"),
    (pg.ArrayField(models.FloatField()), [1.0, float("inf")], "an element: inf is not a JSON number"),
])
def test_synced_values_clients_cannot_hold_are_refused(field, value, problem):
    from demo_project.todos.models import Todo

    field.set_attributes_from_name("col")
    field.model = Todo
    with pytest.raises(UnsyncableValue) as info:
        snapshot_value(field, value, synced=True)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith("PowerSync cannot sync todos.Todo.col: ") and problem in message
    # ...but kept losslessly in columns no client receives.
    back = snapshot_to_python(field, orjson.loads(orjson.dumps(snapshot_value(field, value))))
    assert repr(back) == repr(value)


def test_json_at_the_depth_limit_syncs():
    field = models.JSONField()
    text = encode_value(snapshot_to_python(field, snapshot_value(field, nested(254), synced=True)), field)
    assert text == "[" * 254 + "]" * 254


def test_client_encoding_never_fails_on_values_read_from_the_database():
    # A resync reads rows written without PowerSync (raw SQL): what JSON cannot hold becomes null.
    assert encode_value(float("nan"), models.FloatField()) is None
    assert encode_value(float("inf")) is None
    assert encode_value(nested(300), models.JSONField()) == "[" * 300 + "]" * 300


def test_snapshots_of_earlier_versions_still_decode():
    assert snapshot_to_python(models.JSONField(), {"json": {"a": 1}}) == {"a": 1}
    assert snapshot_to_python(models.DurationField(), {"td": 1.5}) == datetime.timedelta(seconds=1.5)
    assert snapshot_to_python(models.DurationField(), "1 02:03:04") == datetime.timedelta(days=1, seconds=7384)
    # The Python repr an ArrayField used to be stored as.
    assert snapshot_to_python(pg.ArrayField(models.CharField()), "['a', 'b']") == ["a", "b"]


# --- snapshot -> client value directly (the replicator's rendering) ------------------------------

def _general(field, raw):
    """What clients got before client_converter: through the Python value; or the error it raised."""
    try:
        return encode_value(snapshot_to_python(field, raw), field)
    except Exception as exc:  # noqa: BLE001
        return type(exc)


def _direct(field, raw, iso):
    from powersync_django.encoding import client_converter

    try:
        return client_converter(field, iso)[0](raw)
    except Exception as exc:  # noqa: BLE001
        return type(exc)


def _fk_to(target, name):
    model = type(name, (models.Model,), {
        "__module__": __name__, "Meta": type("Meta", (), {"app_label": "todos"}), "id": target})
    return models.ForeignKey(model, on_delete=models.CASCADE)


CONVERTER_VALUES = [
    (models.CharField(), ["text", "", "2026-01-01", 5, True, None]),
    (models.BooleanField(), [True, False, "not a boolean", 1, 0, "t", None]),
    (models.IntegerField(), [0, -5, 2**70, "12", 1.5, True, "x", None]),
    (models.UUIDField(), ["6f1c2b0e-0d4e-4a4b-9a43-2f0b2d8f9c11", "6F1C2B0E-0D4E-4A4B-9A43-2F0B2D8F9C11",
                          "6f1c2b0e0d4e4a4b9a432f0b2d8f9c11", "{6f1c2b0e-0d4e-4a4b-9a43-2f0b2d8f9c11}",
                          "6f1c2b0e-0d4e-4a4b-9a43-2f0b2d8f9c1", "not a uuid", 7, None]),
    (models.DateTimeField(), ["2026-03-04T05:06:07.000890+00:00", "2026-03-04T05:06:07+00:00",
                              "2026-03-04T05:06:07.120000+00:00", "2026-03-04T05:06:07.000000+00:00",
                              "2026-03-04T05:06:07.5+00:00", "2026-03-04T05:06:07+01:00", "2026-03-04T05:06:07",
                              "2026-03-04 05:06:07+00:00", "2026-02-30T05:06:07+00:00", "2026-03-04T25:06:07+00:00",
                              "0001-01-01T00:00:00+00:00", "bad date", 5, None]),
    (models.DateField(), ["1999-12-31", "2026-02-30", "2026-2-3", "19991231", "bad", None]),
    (models.FloatField(), [0.1, -0.0, 1e308, 3, "1.5", "nan", "inf", None]),
    (models.DecimalField(max_digits=6, decimal_places=2), ["1.50", "+1.5", "01.5", "1E+2", None]),
    (models.TimeField(), ["23:59:59.999999", "12:00:00", None]),
    (models.JSONField(), ['{"a": 1}', '"s"', "null", None]),
    (models.DurationField(), [{"us": 5}, None]),
]
CONVERTER_VALUES += [(_fk_to(models.UUIDField(primary_key=True), "ConverterUuidTarget"), CONVERTER_VALUES[3][1]),
                     (_fk_to(models.CharField(primary_key=True, max_length=5), "ConverterCharTarget"), ["k", 5, None])]


@pytest.mark.parametrize("iso", [False, True])
@pytest.mark.parametrize(("field", "values"), CONVERTER_VALUES)
def test_client_converter_is_the_general_path(field, values, iso):
    """Each snapshot value gives the same client value (or the same error) as snapshot_to_python +
    encode_value, including values capture never writes (non-canonical UUIDs, other offsets, invalid dates)."""
    if not hasattr(field, "attname"):
        field.set_attributes_from_name("value")
    with override_settings(POWERSYNC={**get_config(), "DATETIME_FORMAT": "iso" if iso else "space"}):
        for raw in values:
            got, expected = _direct(field, raw, iso), _general(field, raw)
            assert (type(got), got) == (type(expected), expected), raw


PYTHON_VALUES = ["text", "", 0, -5, 2**70, True, False, 1.5, float("nan"), None, uuid.uuid4(),
                 datetime.datetime(2026, 3, 4, 5, 6, 7, 120000, tzinfo=UTC), datetime.datetime(2026, 3, 4, 5, 6, 7),
                 datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC), datetime.datetime(1, 1, 1, 0, 0, 0, 5, tzinfo=UTC),
                 datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=PARIS), datetime.date(1999, 12, 31),
                 decimal.Decimal("1.50"), b"\x00\xff", {"a": [1]}, [1, "x"], datetime.timedelta(seconds=1.5)]


@pytest.mark.parametrize("iso", [False, True])
@pytest.mark.parametrize("field", [models.CharField(), models.UUIDField(), models.BooleanField(),
                                   models.IntegerField(), models.DateTimeField(), models.JSONField(),
                                   models.FloatField(), pg.ArrayField(models.IntegerField())])
def test_value_converter_is_encode_value(field, iso):
    """The build's per-column converters give what encode_value gives, for values of any type."""
    from powersync_django.encoding import value_converter

    def outcome(f, value):
        try:
            return f(value)
        except Exception as exc:  # noqa: BLE001  (a value the field cannot hold: the same error)
            return type(exc)

    convert = value_converter(field, iso)
    with override_settings(POWERSYNC={**get_config(), "DATETIME_FORMAT": "iso" if iso else "space"}):
        for value in PYTHON_VALUES:
            expected = outcome(lambda v: encode_value(v, field), value)
            got = outcome(convert, value)
            assert type(got) is type(expected), value
            assert got == expected or (got != got and expected != expected), value  # NaN: equal as NaN
