"""Stream subscription parameters bound to a DecimalField find the bucket of the rows whatever their scale."""

from __future__ import annotations

import decimal

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import override_settings
from schema_project.workspace.models import Document
from test_streams_schema import request, sync_once

pytestmark = pytest.mark.django_db(transaction=True)

STREAMS = {"by_price": {"parameters": {"price": "subscription.price"},
                        "data": [{"model": "workspace.Document", "table": "documents",
                                  "filter": {"price": "bucket.price"}}]}}


def test_decimal_subscription_parameters_are_rounded_like_the_column(replicate):
    with override_settings(POWERSYNC={**settings.POWERSYNC, "STREAMS": STREAMS}):
        alice = User.objects.create(username="alice")
        Document.objects.create(owner=alice, title="d", price=decimal.Decimal("12.5"))
        replicate()
        values = ["12.50", 12.5, "12.5", 12.50000001, "1e999999", 10**20]
        lines = sync_once(alice, request(*({"stream": "by_price", "parameters": {"price": v}} for v in values)))
    checkpoint = lines[0]["checkpoint"]
    [bucket] = checkpoint["buckets"]
    assert (bucket["bucket"], bucket["count"]) == ('1#by_price["12.50"]', 1)
    assert bucket["subscriptions"] == [{"sub": 0}, {"sub": 1}, {"sub": 2}, {"sub": 3}]
    assert [e["subscription"] for e in checkpoint["streams"][0]["errors"]] == [4, 5]
