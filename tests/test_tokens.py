"""The token view for logged-in users: what a web app's fetchCredentials calls."""

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

from powersync_django.auth import verify_token

pytestmark = pytest.mark.django_db


def test_logged_in_user_gets_a_token_that_verifies():
    user = User.objects.create_user("ann", password="pw")
    client = Client()
    client.force_login(user)
    response = client.get("/api/token")
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    body = response.json()
    assert body["user_id"] == str(user.pk)
    claims = verify_token(body["token"])
    assert claims.user_id == str(user.pk)
    assert claims.claims["aud"] == "powersync"
    assert abs(claims.expires_at - body["expires_at"]) <= 1


def test_anonymous_gets_401_json():
    response = Client().get("/api/token")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "PSYNC_S2106"


def test_only_get():
    user = User.objects.create_user("bob")
    client = Client()
    client.force_login(user)
    assert client.post("/api/token").status_code == 405


def claims_for(user):
    return {"parameters": {"team": "t-" + user.username}}


def test_ttl_and_claims_are_configurable(settings):
    from django.conf import settings as live

    cfg = {**live.POWERSYNC, "TOKEN_VIEW": {"TTL": 120, "CLAIMS": "tests.test_tokens.claims_for"}}
    user = User.objects.create_user("cy")
    client = Client()
    client.force_login(user)
    with override_settings(POWERSYNC=cfg):
        body = client.get("/api/token").json()
        claims = verify_token(body["token"])
    assert claims.claims["parameters"] == {"team": "t-cy"}
    assert claims.claims["exp"] - claims.claims["iat"] == 120


def test_can_be_disabled():
    from django.conf import settings as live

    user = User.objects.create_user("dee")
    client = Client()
    client.force_login(user)
    with override_settings(POWERSYNC={**live.POWERSYNC, "TOKEN_VIEW": {"ENABLED": False}}):
        assert client.get("/api/token").status_code == 404
