"""Every built-in field type round-trips: ORM value -> snapshot -> op data -> upload -> ORM value.

``workspace.Specimen`` has one nullable column of each built-in field type (plus arrays, hstore and ranges on
PostgreSQL). The op data a client receives is checked against the README's value-encoding table, written out
independently here; the client then uploads exactly that data through the upload endpoint, and the stored row
must equal the original.
"""

from __future__ import annotations

import base64
import copy
import datetime
import decimal
import json
import math
import os
import uuid
import zoneinfo
from typing import Any

import orjson
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import DataError, IntegrityError, connection, models
from django.test import Client, override_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework import serializers
from schema_project.workspace.models import ON_POSTGRES, Specimen

from powersync_django.auth import make_token
from powersync_django.encoding import ArrayField, HStoreField, RangeField, UnsyncableValue
from powersync_django.models import BucketOp, OutboxEntry
from powersync_django.replication import replicate_now
from powersync_django.upload_fields import UploadModelSerializer

pytestmark = pytest.mark.django_db(transaction=True)

UTC = datetime.UTC
ZONES = [UTC, zoneinfo.ZoneInfo("Europe/Paris"), zoneinfo.ZoneInfo("America/Sao_Paulo")]
FIELDS = [f for f in Specimen._meta.concrete_fields if not f.primary_key]


def specimen_settings(**query: Any) -> override_settings:
    """The project's POWERSYNC plus a global bucket of every Specimen, writable by anyone."""
    config = copy.deepcopy(settings.POWERSYNC)
    config["BUCKETS"]["specimens"] = {"data": [{"model": "workspace.Specimen", "table": "specimens", **query}]}
    config["UPLOAD"]["PERMISSIONS"]["specimens"] = "powersync_django.upload.allow_any"
    return override_settings(POWERSYNC=config)


@pytest.fixture(autouse=True)
def _specimens():
    with specimen_settings():
        yield


# --- the README table, written out -------------------------------------------------------------


def _time(value: datetime.time | datetime.datetime) -> str:
    text = f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    return text + (f".{value.microsecond:06d}" if value.microsecond else "")


def _date(value: datetime.date) -> str:
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def expected(field: models.Field, value: Any) -> Any:
    """What the README's value-encoding table says a client receives (JSON text parsed, for JSON columns)."""
    if value is None:
        return None
    if isinstance(field, models.JSONField):
        return value
    if ArrayField is not None and isinstance(field, ArrayField):
        return [element(field.base_field, v) for v in value]
    if HStoreField is not None and isinstance(field, HStoreField):
        return value
    if RangeField is not None and isinstance(field, RangeField):
        return element(field, value)
    if isinstance(value, bool):
        return 1 if value else 0
    if isinstance(value, int | float | str):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        value = value.astimezone(UTC)
        fraction = f".{value.microsecond:06d}".rstrip("0") if value.microsecond else ""
        return f"{_date(value)} {value.hour:02d}:{value.minute:02d}:{value.second:02d}{fraction}Z"
    if isinstance(value, datetime.date):
        return _date(value)
    if isinstance(value, datetime.time):
        return _time(value)
    if isinstance(value, datetime.timedelta):
        return ((value.days * 86400 + value.seconds) * 10**6 + value.microseconds) / 10**6
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    raise AssertionError(f"no encoding for {field!r} {value!r}")


def element(field: models.Field, value: Any) -> Any:
    """Elements of arrays and ranges are encoded like columns; nested arrays and ranges stay JSON."""
    if RangeField is not None and isinstance(field, RangeField):
        if value.isempty:
            return {"empty": True}
        return {"bounds": value._bounds, "lower": element(field.base_field, value.lower),
                "upper": element(field.base_field, value.upper)}
    return expected(field, value)


def is_json_text(field: models.Field) -> bool:
    return isinstance(field, models.JSONField) or any(
        cls is not None and isinstance(field, cls) for cls in (ArrayField, HStoreField, RangeField))


def numbers_exact(value: Any) -> Any:
    """JSON numbers compared by value (PostgreSQL's jsonb writes 1e20 back as 100000000000000000000)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return decimal.Decimal(repr(value))
    if isinstance(value, list):
        return [numbers_exact(v) for v in value]
    return {k: numbers_exact(v) for k, v in value.items()}


def sorted_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert keys == sorted(keys), keys
    return dict(pairs)


def assert_client_value(field: models.Field, sent: Any, value: Any) -> None:
    want = expected(field, value)
    if want is not None and is_json_text(field):
        assert isinstance(sent, str), (field.name, sent)
        assert numbers_exact(json.loads(sent)) == numbers_exact(want), (field.name, sent, value)
        json.loads(sent, object_pairs_hook=sorted_keys)  # canonical: keys sorted
    else:
        assert sent == want and type(sent) is type(want), (field.name, sent, want)


def assert_same_value(field: models.Field, got: Any, want: Any) -> None:
    if isinstance(want, memoryview | bytes):
        assert bytes(got) == bytes(want), field.name
    elif isinstance(field, models.JSONField):
        assert numbers_exact(got) == numbers_exact(want), (field.name, got, want)
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == want, (field.name, got, want)


# --- values ------------------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
INT64 = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    st.none() | st.booleans() | INT64 | FLOATS | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
AWARE = st.datetimes(min_value=datetime.datetime(1900, 1, 2), max_value=datetime.datetime(9000, 1, 1),
                     timezones=st.sampled_from(ZONES))


def nullable(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


def _strategies() -> dict[str, st.SearchStrategy]:
    out = {
        "char": TEXT.filter(lambda s: len(s) <= 100),
        "text": TEXT,
        "slug": st.from_regex(r"\A[-a-zA-Z0-9_]{0,50}\Z"),
        "email": st.from_regex(r"\A[a-z0-9]{1,8}@[a-z]{1,10}\.(com|org|fr)\Z"),
        "url": st.from_regex(r"\Ahttps?://[a-z]{1,10}\.(com|org)(/[a-z0-9]{0,8}){0,3}\Z"),
        "ip": st.ip_addresses().map(str),
        "uuid": st.uuids(),
        "flag": st.booleans(),
        "small": st.integers(-(2**15), 2**15 - 1),
        "integer": st.integers(-(2**31), 2**31 - 1),
        "big": INT64,
        "positive_small": st.integers(0, 2**15 - 1),
        "positive": st.integers(0, 2**31 - 1),
        "positive_big": st.integers(0, 2**63 - 1),
        "real": FLOATS,
        "amount": st.decimals(min_value=-(10**9) + 1, max_value=10**9 - 1, places=3),
        "day": st.dates(),
        "clock": st.times(),
        "moment": AWARE,
        # Seconds as a double are exact to the microsecond up to about 140 years (README).
        "span": st.timedeltas(min_value=datetime.timedelta(days=-50000), max_value=datetime.timedelta(days=50000)),
        "data": JSON,
        "blob": st.binary(max_size=40),
    }
    if ON_POSTGRES:
        from django.db.backends.postgresql.psycopg_any import DateRange, DateTimeTZRange, NumericRange

        int32 = st.integers(-(2**31) + 2, 2**31 - 2)
        bounds = st.sampled_from(["[)", "(]", "[]", "()"])

        def ranges(kind: Any, values: st.SearchStrategy) -> st.SearchStrategy:
            ends = st.tuples(nullable(values), nullable(values)).map(
                lambda t: tuple(sorted(t)) if None not in t else t)
            return st.builds(lambda e, b: kind(e[0], e[1], b), ends, bounds) | st.just(kind(empty=True))

        out.update({
            "numbers": st.lists(int32, max_size=5),
            "words": st.lists(nullable(TEXT.filter(lambda t: len(t) <= 20)), max_size=4),
            "moments": st.lists(nullable(AWARE), max_size=3),
            "grid": st.integers(0, 3).flatmap(lambda cols: st.lists(st.lists(
                st.decimals(min_value=-9999, max_value=9999, places=2), min_size=max(cols, 1),
                max_size=max(cols, 1)), max_size=3)),
            "attrs": st.dictionaries(TEXT, nullable(TEXT), max_size=4),
            "int_range": ranges(NumericRange, int32),
            "big_range": ranges(NumericRange, st.integers(-(2**62), 2**62)),
            "decimal_range": ranges(NumericRange, st.decimals(allow_nan=False, allow_infinity=False, places=4,
                                                              min_value=-(10**6), max_value=10**6)),
            "day_range": ranges(DateRange, st.dates(min_value=datetime.date(2, 1, 1),
                                                    max_value=datetime.date(9998, 1, 1))),
            "moment_range": ranges(DateTimeTZRange, AWARE),
        })
    return out


ROWS = st.fixed_dictionaries({name: nullable(strategy) for name, strategy in _strategies().items()})


def op_data(pk: Any) -> dict[str, Any]:
    op = BucketOp.objects.filter(object_type="specimens", object_id=str(pk)).order_by("-op_id").first()
    assert op is not None and op.op == "PUT", pk
    return orjson.loads(op.data)


def upload(client: Client, body: dict[str, Any]):
    # Upload hooks get the Django user of the token's sub: it must exist.
    user, _ = User.objects.get_or_create(username="uploader")
    return client.post("/api/upload", orjson.dumps(body), content_type="application/json",
                       HTTP_AUTHORIZATION=f"Token {make_token(str(user.pk))}")


def test_specimen_has_every_builtin_field_type():
    used = {type(f) for f in Specimen._meta.concrete_fields}
    builtin = {models.CharField, models.TextField, models.SlugField, models.EmailField, models.URLField,
               models.GenericIPAddressField, models.UUIDField, models.BooleanField, models.SmallIntegerField,
               models.IntegerField, models.BigIntegerField, models.PositiveSmallIntegerField,
               models.PositiveIntegerField, models.PositiveBigIntegerField, models.FloatField, models.DecimalField,
               models.DateField, models.TimeField, models.DateTimeField, models.DurationField, models.JSONField,
               models.BinaryField}
    assert builtin <= used
    assert set(_strategies()) == {f.name for f in FIELDS}


@hypothesis_settings(max_examples=int(os.environ.get("VALUES_EXAMPLES", "60")), deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(row=ROWS)
def test_every_field_round_trips_through_a_client(client: Client, row: dict[str, Any]) -> None:
    original = Specimen.objects.create(**row)
    replicate_now()
    stored = Specimen.objects.get(pk=original.pk)
    data = op_data(original.pk)
    assert data["id"] == str(original.pk)
    for field in FIELDS:
        assert_client_value(field, data[field.attname], getattr(stored, field.attname))

    # The client uploads the row it has as a new row: non-null columns only (protocol.md §14.2).
    copy_id = uuid.uuid4()
    sent = {k: v for k, v in data.items() if k != "id" and v is not None}
    response = upload(client, {"batch": [{"op": "PUT", "type": "specimens", "id": str(copy_id), "data": sent}]})
    assert response.status_code == 200, response.content
    uploaded = Specimen.objects.get(pk=copy_id)
    for field in FIELDS:
        assert_same_value(field, getattr(uploaded, field.attname), getattr(stored, field.attname))

    # And clients receive the uploaded row exactly as they sent it.
    replicate_now()
    assert op_data(copy_id) == {**data, "id": str(copy_id)}
    Specimen.objects.filter(pk__in=[original.pk, copy_id]).delete()


def test_resync_sends_what_the_snapshot_sent():
    """The replicator reads rows from snapshots; a resync reads them from the database: same op data."""
    from powersync_django.models import ReplicationState

    rows = [Specimen.objects.create(data={"b": [1, 2.5, {"c": None}], "a": "x"}, amount=decimal.Decimal("1.5"),
                                    moment=datetime.datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=ZONES[1]),
                                    span=datetime.timedelta(days=-1, microseconds=7), blob=b"\x00\xff",
                                    **({"grid": [[decimal.Decimal("1.5")]], "int_range": (1, 5),
                                        "moments": [None, datetime.datetime(2026, 1, 1, tzinfo=UTC)]}
                                       if ON_POSTGRES else {})),
            Specimen.objects.create()]
    replicate_now()
    before = {r.pk: op_data(r.pk) for r in rows}
    ReplicationState.objects.update(rules_hash="")  # the next run rebuilds from the querysets
    replicate_now()
    assert {r.pk: op_data(r.pk) for r in rows} == before
    assert before[rows[0].pk]["amount"] == "1.500"
    if ON_POSTGRES:
        assert before[rows[0].pk]["grid"] == '[["1.50"]]'
        assert before[rows[0].pk]["int_range"] == '{"bounds":"[)","lower":1,"upper":5}'


def test_json_text_upload_is_stored_as_json_not_a_string(client: Client):
    pk = uuid.uuid4()
    response = upload(client, {"batch": [{"op": "PUT", "type": "specimens", "id": str(pk),
                                          "data": {"data": '{"a": [1, true]}'}}]})
    assert response.status_code == 200, response.content
    assert Specimen.objects.get(pk=pk).data == {"a": [1, True]}
    with connection.cursor() as cursor:
        if ON_POSTGRES:
            cursor.execute("SELECT jsonb_typeof(data) FROM workspace_specimen WHERE id = %s", [pk])
        else:
            cursor.execute("SELECT json_type(data) FROM workspace_specimen WHERE id = %s", [pk.hex])
        assert cursor.fetchone()[0] == "object"
    replicate_now()
    assert op_data(pk)["data"] == '{"a":[1,true]}'


@pytest.mark.parametrize(("text", "value"), [('"abc"', "abc"), ("7", 7), ("null", None), ("[]", [])])
def test_json_text_of_any_json_value(client: Client, text: str, value: Any):
    pk = uuid.uuid4()
    response = upload(client, {"batch": [{"op": "PUT", "type": "specimens", "id": str(pk), "data": {"data": text}}]})
    assert response.status_code == 200, response.content
    assert Specimen.objects.get(pk=pk).data == value


@pytest.mark.parametrize("text", ["not json", "{'a': 1}", '{"a": NaN}', "[1", "[" * 5000 + "]", "[" * 900 + "x"])
def test_upload_of_text_that_is_not_json_is_a_400(client: Client, text: str):
    pk = uuid.uuid4()
    response = upload(client, {"batch": [{"op": "PUT", "type": "specimens", "id": str(pk), "data": {"data": text}}]})
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["operations"][0]["code"] == "invalid"
    assert "JSON" in error["operations"][0]["errors"]["data"][0]
    assert not Specimen.objects.filter(pk=pk).exists()


@pytest.mark.parametrize(("column", "sent", "value"), [
    ("flag", 1, True), ("flag", 0, False),
    ("amount", "12.5", decimal.Decimal("12.500")),
    ("day", "2026-02-03", datetime.date(2026, 2, 3)),
    ("clock", "07:08:09.00012", datetime.time(7, 8, 9, 120)),
    ("moment", "2026-11-26 05:44:47.99282Z", datetime.datetime(2026, 11, 26, 5, 44, 47, 992820, tzinfo=UTC)),
    ("moment", "2026-11-26T05:44:47Z", datetime.datetime(2026, 11, 26, 5, 44, 47, tzinfo=UTC)),
    ("span", 60.0005, datetime.timedelta(seconds=60, microseconds=500)),
    ("span", -1e-06, datetime.timedelta(microseconds=-1)),
    ("span", "90", datetime.timedelta(seconds=90)),
    ("span", "1 02:03:04", datetime.timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ("blob", "AAFoaQ==", b"\x00\x01hi"),
    ("uuid", "6f1c2b0e-0d4e-4a4b-9a43-2f0b2d8f9c11", uuid.UUID("6f1c2b0e-0d4e-4a4b-9a43-2f0b2d8f9c11")),
    ("char", "  spaced  ", "  spaced  "),
])
def test_upload_converts_client_text(client: Client, column: str, sent: Any, value: Any):
    pk = uuid.uuid4()
    response = upload(client, {"batch": [{"op": "PUT", "type": "specimens", "id": str(pk), "data": {column: sent}}]})
    assert response.status_code == 200, response.content
    got = getattr(Specimen.objects.get(pk=pk), column)
    assert (bytes(got) if column == "blob" else got) == value


@pytest.mark.parametrize(("column", "sent"), [
    ("blob", "not base64!"), ("span", "soon"), ("span", "1e400"), ("span", 1e300), ("amount", "abc"),
    ("moment", "yesterday"), ("flag", "maybe"),
])
def test_upload_of_unreadable_values_is_a_400(client: Client, column: str, sent: Any):
    response = upload(client, {"batch": [{"op": "PUT", "type": "specimens", "id": str(uuid.uuid4()),
                                          "data": {column: sent}}]})
    assert response.status_code == 400, response.content
    assert column in response.json()["error"]["operations"][0]["errors"]


@pytest.mark.postgres
@pytest.mark.parametrize(("column", "sent", "value"), [
    ("numbers", "[1,2,3]", [1, 2, 3]),
    ("moments", '["2026-11-26 05:44:47.5Z",null]', [datetime.datetime(2026, 11, 26, 5, 44, 47, 500000, tzinfo=UTC),
                                                     None]),
    ("grid", '[["1.5","2"],["3","4"]]', [[decimal.Decimal("1.50"), decimal.Decimal("2.00")],
                                         [decimal.Decimal("3.00"), decimal.Decimal("4.00")]]),
    ("attrs", '{"k":"v","n":null," s ":"\\r "}', {"k": "v", "n": None, " s ": "\r "}),
    ("int_range", '{"bounds":"[)","lower":1,"upper":5}', (1, 5, "[)")),
    ("int_range", '{"bounds":"[]","lower":1,"upper":null}', (1, None, "[)")),
    ("int_range", '{"empty":true}', "empty"),
    ("moment_range", '{"bounds":"[)","lower":"2026-01-01 00:00:00Z","upper":null}',
     (datetime.datetime(2026, 1, 1, tzinfo=UTC), None, "[)")),
    ("day_range", '{"bounds":"[]","lower":"2026-01-01","upper":"2026-01-03"}',
     (datetime.date(2026, 1, 1), datetime.date(2026, 1, 4), "[)")),
])
def test_upload_of_postgres_fields(client: Client, column: str, sent: str, value: Any):
    pk = uuid.uuid4()
    response = upload(client, {"batch": [{"op": "PUT", "type": "specimens", "id": str(pk), "data": {column: sent}}]})
    assert response.status_code == 200, response.content
    got = getattr(Specimen.objects.get(pk=pk), column)
    if value == "empty":
        assert got.isempty
    elif isinstance(value, tuple):
        assert (got.lower, got.upper, got._bounds) == value
    else:
        assert got == value


@pytest.mark.postgres
@pytest.mark.parametrize(("column", "sent"), [
    ("numbers", "[1,"), ("numbers", '["x"]'), ("numbers", '{"a":1}'), ("attrs", "[1]"), ("int_range", "[1,2]"),
    ("int_range", '{"lower":1,"upper":2,"bounds":"<>"}'), ("int_range", '{"lower":5,"upper":1}'),
])
def test_upload_of_unreadable_postgres_values_is_a_400(client: Client, column: str, sent: str):
    response = upload(client, {"batch": [{"op": "PUT", "type": "specimens", "id": str(uuid.uuid4()),
                                          "data": {column: sent}}]})
    assert response.status_code == 400, response.content


# --- values clients cannot hold --------------------------------------------------------------------


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(("values", "message"), [
    ({"data": nested(300)}, "PowerSync cannot sync workspace.Specimen.data: the JSON value is nested more than 254 "
                            "levels deep. Flatten it, or store it in a field that is not synced."),
    ({"real": float("inf")}, "PowerSync cannot sync workspace.Specimen.real: inf is not a JSON number. "
                             "Store None (or a finite number) instead."),
])
def test_saving_a_value_clients_cannot_hold_is_a_clear_error(values: dict[str, Any], message: str):
    with pytest.raises(UnsyncableValue) as info:
        Specimen.objects.create(**values)
    assert str(info.value) == message
    # The row and its outbox entry were rolled back together; the replicator has nothing to choke on.
    assert not Specimen.objects.exists()
    assert not OutboxEntry.objects.filter(model="workspace.specimen").exists()
    replicate_now()


def test_json_nan_is_refused_by_the_database():
    # Both databases check JSON themselves (jsonb; SQLite's JSON_VALID constraint): NaN never reaches PowerSync.
    # (In columns of other types, it does: see test_saving_a_value_clients_cannot_hold_is_a_clear_error.)
    with pytest.raises((DataError, IntegrityError)):
        Specimen.objects.create(data={"x": float("nan")})
    assert not Specimen.objects.exists()
    assert not OutboxEntry.objects.filter(model="workspace.specimen").exists()


def test_non_string_keys_sync_as_the_database_stores_them():
    row = Specimen.objects.create(data={1: "a", "b": {2.5: None}, None: 0})
    replicate_now()
    assert op_data(row.pk)["data"] == '{"1":"a","b":{"2.5":null},"null":0}'
    row.refresh_from_db()
    assert row.data == {"1": "a", "b": {"2.5": None}, "null": 0}


def test_json_integers_beyond_64_bits_sync_exactly(client: Client):
    row = Specimen.objects.create(data={"n": 2**64})
    pk = uuid.uuid4()
    response = upload(client, {"batch": [{"op": "PUT", "type": "specimens", "id": str(pk),
                                          "data": {"data": '{"n": -18446744073709551617}'}}]})
    assert response.status_code == 200, response.content
    replicate_now()
    assert op_data(row.pk)["data"] == '{"n":18446744073709551616}'
    assert op_data(pk)["data"] == '{"n":-18446744073709551617}'


def test_unsynced_columns_may_hold_anything():
    with specimen_settings(exclude=["real", "data"]):
        row = Specimen.objects.create(real=float("inf"), data=nested(300), char="x")
        replicate_now()
        data = op_data(row.pk)
    assert data["char"] == "x" and "real" not in data and "data" not in data


@pytest.mark.parametrize("depth", [255, 900, 5000])
def test_upload_of_json_too_deep_to_sync_is_a_400_for_that_operation(client: Client, depth: int):
    pk = uuid.uuid4()
    response = upload(client, {"batch": [
        {"op": "PUT", "type": "specimens", "id": str(uuid.uuid4()), "data": {"char": "fine"}},
        {"op": "PUT", "type": "specimens", "id": str(pk), "data": {"data": "[" * depth + "]" * depth}},
    ]})
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "UPLOAD_INVALID"
    [operation] = error["operations"]
    assert (operation["index"], operation["id"], operation["code"]) == (1, str(pk), "invalid")
    assert operation["errors"] == {"data": ["JSON nested more than 254 levels deep cannot be synced."]}
    assert not Specimen.objects.exists()  # the whole batch was rolled back


class TextFloatSerializer(UploadModelSerializer):
    """A custom serializer that hands the model whatever text it gets (FloatField takes "inf")."""

    real = serializers.CharField()

    class Meta:
        model = Specimen
        fields = ["real"]


def test_upload_of_a_value_clients_cannot_hold_is_a_400_for_that_operation(client: Client):
    config = copy.deepcopy(settings.POWERSYNC)
    config["UPLOAD"]["SERIALIZERS"] = {"specimens": TextFloatSerializer}
    pk = uuid.uuid4()
    with override_settings(POWERSYNC=config):
        response = upload(client, {"batch": [
            {"op": "PUT", "type": "specimens", "id": str(uuid.uuid4()), "data": {"real": "1.5"}},
            {"op": "PUT", "type": "specimens", "id": str(pk), "data": {"real": "inf"}},
        ]})
    assert response.status_code == 400, response.content
    [operation] = response.json()["error"]["operations"]
    assert (operation["index"], operation["id"], operation["code"]) == (1, str(pk), "invalid")
    assert operation["errors"] == {"real": ["PowerSync cannot sync workspace.Specimen.real: inf is not a JSON number. "
                                            "Store None (or a finite number) instead."]}
    assert not Specimen.objects.exists()
    replicate_now()


@pytest.mark.postgres
def test_document_tags_sync_and_upload(client: Client):
    """Document.tags (an ArrayField) used to be snapshotted as its Python repr, which the replicator choked on."""
    from django.contrib.auth.models import User
    from schema_project.workspace.models import Document

    alice = User.objects.create(username="alice")
    doc = Document.objects.create(owner=alice, title="t", tags=["a", "b's", ""])
    replicate_now()
    op = BucketOp.objects.filter(object_type="documents", object_id=str(doc.pk)).latest("op_id")
    data = orjson.loads(op.data)
    assert data["tags"] == '["a","b\'s",""]'
    assert data["body"] == "{}"
    response = client.post("/api/upload", orjson.dumps({"batch": [
        {"op": "PATCH", "type": "documents", "id": str(doc.pk), "data": {"tags": '["c"]', "body": '{"k": [1]}'}},
    ]}), content_type="application/json", HTTP_AUTHORIZATION=f"Token {make_token(str(alice.pk))}")
    assert response.status_code == 200, response.content
    doc.refresh_from_db()
    assert (doc.tags, doc.body) == (["c"], {"k": [1]})


def test_iso_datetime_format_round_trips(client: Client):
    config = copy.deepcopy(settings.POWERSYNC)
    config["DATETIME_FORMAT"] = "iso"
    moment = datetime.datetime(2026, 11, 26, 5, 44, 47, 11390, tzinfo=UTC)
    extra = {"moments": [moment], "moment_range": (moment, None)} if ON_POSTGRES else {}
    with override_settings(POWERSYNC=config):
        row = Specimen.objects.create(moment=moment, **extra)
        replicate_now()
        data = op_data(row.pk)
        assert data["moment"] == "2026-11-26T05:44:47.011390Z"
        if ON_POSTGRES:
            assert data["moments"] == '["2026-11-26T05:44:47.011390Z"]'
            assert data["moment_range"] == '{"bounds":"[)","lower":"2026-11-26T05:44:47.011390Z","upper":null}'
        pk = uuid.uuid4()
        sent = {k: v for k, v in data.items() if k != "id" and v is not None}
        response = upload(client, {"batch": [{"op": "PUT", "type": "specimens", "id": str(pk), "data": sent}]})
        assert response.status_code == 200, response.content
    back = Specimen.objects.get(pk=pk)
    assert back.moment == moment
    if ON_POSTGRES:
        assert back.moments == [moment] and back.moment_range.lower == moment


@pytest.mark.parametrize("value", ["0.1245", "0.1255", "-0.1245", "2.0005", "-7.9995", "1.00049"])
def test_decimal_places_beyond_the_column_round_as_the_database_does(value: str):
    """A Decimal with more places than the column keeps (an app's computed price): clients get the stored value
    (PostgreSQL rounds ties away from zero, SQLite's reads round them half-even), before and after a resync."""
    from powersync_django.models import ReplicationState

    replicate_now()
    row = Specimen.objects.create(amount=decimal.Decimal(value))
    replicate_now()
    row.refresh_from_db()
    assert op_data(row.pk)["amount"] == str(row.amount)
    ReplicationState.objects.update(rules_hash="")  # the next run rebuilds from the database
    replicate_now()
    assert op_data(row.pk)["amount"] == str(row.amount)


def test_ipv4_mapped_address_uploads_as_the_client_has_it(client: Client):
    """DRF's IPAddressField unpacks ``::ffff:1.2.3.4`` to ``1.2.3.4``; the model field (unpack_ipv4=False)
    keeps it, so an uploaded copy of a synced row must too (hypothesis found ``::ffff:0:0``)."""
    original = Specimen.objects.create(ip="::ffff:0:0")
    replicate_now()
    sent = op_data(original.pk)["ip"]
    assert sent == Specimen.objects.get(pk=original.pk).ip == "::ffff:0.0.0.0"
    copy_id = uuid.uuid4()
    response = upload(client, {"batch": [{"op": "PUT", "type": "specimens", "id": str(copy_id), "data": {"ip": sent}}]})
    assert response.status_code == 200, response.content
    assert Specimen.objects.get(pk=copy_id).ip == "::ffff:0.0.0.0"
