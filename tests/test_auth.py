"""Tests of powersync_django.auth (JWT verification, tokens) and the powersync_token command."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from powersync_django import auth
from powersync_django.auth import (
    AuthError,
    TokenClaims,
    make_token,
    parse_authorization_header,
    verify_token,
)
from powersync_django.management.commands.powersync_token import Command

SECRET = "test-secret-0123456789-abcdefghijklmnop"


def jwt_settings(**jwt_config: Any) -> override_settings:
    """``override_settings`` with ``POWERSYNC = {"JWT": jwt_config}``.

    Public-key tests that are not about the audience opt out of it (``VERIFY_AUDIENCE=False``).
    """
    if jwt_config.get("PUBLIC_KEYS") or jwt_config.get("JWKS_URL"):
        jwt_config.setdefault("VERIFY_AUDIENCE", False)
    return override_settings(POWERSYNC={"JWT": jwt_config})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": "user-1", "iat": now, "exp": now + 600}
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET, headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers)


def raw_hmac_token(payload: dict[str, Any], secret: bytes, alg: str = "HS256") -> str:
    """An HMAC token made by hand (PyJWT refuses PEM secrets), as an attacker would."""
    signing_input = (
        f"{b64url(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64url(json.dumps(payload).encode())}"
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def pem(private_key: Any) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def error_of(token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        verify_token(token)
    return info.value


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(autouse=True)
def _fresh_jwks_clients() -> Iterator[None]:
    auth.clear_jwks_clients()
    yield
    auth.clear_jwks_clients()


# --- Authorization header -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Token abc.def.ghi",
        "Bearer abc.def.ghi",
        "token abc.def.ghi",
        "BEARER abc.def.ghi",
        "  Token   abc.def.ghi  ",
    ],
)
def test_parse_authorization_header_accepts_token_and_bearer(value: str) -> None:
    assert parse_authorization_header(value) == "abc.def.ghi"


@pytest.mark.parametrize(
    "value", [None, "", "abc.def.ghi", "Token", "Token ", "Basic abc", "Token a b", "Tokenabc.def.ghi"]
)
def test_parse_authorization_header_rejects_others(value: str | None) -> None:
    with pytest.raises(AuthError) as info:
        parse_authorization_header(value)
    # Byte-identical to the reference service (peer-wire-samples section 5).
    assert info.value.status == 401
    assert json.dumps(info.value.as_json(), separators=(",", ":")) == (
        '{"error":{"code":"PSYNC_S2106","status":401,"description":"Authentication required",'
        '"name":"AuthorizationError"}}'
    )


def test_auth_error_str_is_rsocket_style() -> None:
    assert str(AuthError("PSYNC_S2103", "JWT has expired")) == "[PSYNC_S2103] JWT has expired"


# --- HS256 ---------------------------------------------------------------------------------------------------


@jwt_settings(SECRET=SECRET)
def test_hs256_ok() -> None:
    payload = claims(parameters={"team": 7}, extra="x")
    result = verify_token(hs256(payload))
    assert isinstance(result, TokenClaims)
    assert result.user_id == "user-1"
    assert result.expires_at == payload["exp"]
    assert result.claims["extra"] == "x"
    assert result.parameters == {"team": 7}
    assert result.expires_in(now=payload["exp"] - 100.5) == 100
    assert result.expires_in(now=payload["exp"] + 5) == 0
    assert 590 <= result.expires_in() <= 600


@jwt_settings(SECRET=SECRET)
def test_wrong_secret_is_signature_failure_like_reference() -> None:
    err = error_of(hs256(claims(), secret="another-secret-0123456789-abcdefghijk"))
    assert json.dumps(err.as_json(), separators=(",", ":")) == (
        '{"error":{"code":"PSYNC_S2101","status":401,"description":"signature verification failed",'
        '"name":"AuthorizationError"}}'
    )


@jwt_settings(SECRET=SECRET)
def test_tampered_payload_rejected() -> None:
    header, _, signature = hs256(claims()).split(".")
    forged = b64url(json.dumps(claims(sub="admin")).encode())
    err = error_of(f"{header}.{forged}.{signature}")
    assert (err.code, err.description) == ("PSYNC_S2101", "signature verification failed")


@jwt_settings(SECRET=SECRET)
@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "e30.e30.", "x" * (auth.MAX_TOKEN_LENGTH + 1)])
def test_malformed_tokens(token: str) -> None:
    assert error_of(token).code == "PSYNC_S2101"


@jwt_settings(SECRET=SECRET, LEEWAY=60)
def test_expired_and_leeway() -> None:
    now = int(time.time())
    err = error_of(hs256(claims(iat=now - 600, exp=now - 120)))
    assert (err.code, err.description) == ("PSYNC_S2103", "JWT has expired")
    # Within the clock tolerance: accepted, but expires_in is already 0.
    result = verify_token(hs256(claims(iat=now - 600, exp=now - 30)))
    assert result.expires_in() == 0


@jwt_settings(SECRET=SECRET, LEEWAY=0)
def test_expired_without_leeway() -> None:
    now = int(time.time())
    assert error_of(hs256(claims(iat=now - 600, exp=now - 5))).code == "PSYNC_S2103"


@jwt_settings(SECRET=SECRET, LEEWAY=60)
def test_nbf_in_future() -> None:
    now = int(time.time())
    assert error_of(hs256(claims(nbf=now + 300))).code == "PSYNC_S2101"
    verify_token(hs256(claims(nbf=now + 30)))  # within leeway


@jwt_settings(SECRET=SECRET, LEEWAY=60)
def test_iat_in_future_rejected() -> None:
    now = int(time.time())
    assert error_of(hs256(claims(iat=now + 300, exp=now + 600))).code == "PSYNC_S2101"


@jwt_settings(SECRET=SECRET)
@pytest.mark.parametrize(
    "overrides",
    [
        {"iat": None},
        {"exp": None},
        {"sub": None},
        {"sub": ""},
        {"sub": 42},
        {"exp": "soon"},
        {"iat": "yesterday"},
        {"iat": True},
        {"parameters": ["not", "an", "object"]},
        {"parameters": "x"},
    ],
)
def test_bad_claims_rejected(overrides: dict[str, Any]) -> None:
    assert error_of(hs256(claims(**overrides))).code == "PSYNC_S2101"


@jwt_settings(SECRET=SECRET, MAX_LIFETIME=3600)
def test_lifetime_too_long() -> None:
    now = int(time.time())
    err = error_of(hs256(claims(iat=now, exp=now + 3601)))
    assert err.code == "PSYNC_S2104"
    verify_token(hs256(claims(iat=now, exp=now + 3600)))


@jwt_settings(SECRET=SECRET, MAX_LIFETIME=None)
def test_lifetime_unlimited() -> None:
    now = int(time.time())
    verify_token(hs256(claims(iat=now, exp=now + 10 * 365 * 86400)))


@jwt_settings(SECRET=SECRET, AUDIENCE="powersync")
def test_audience_str() -> None:
    verify_token(hs256(claims(aud="powersync")))
    verify_token(hs256(claims(aud=["other", "powersync"])))
    err = error_of(hs256(claims(aud="other")))
    assert err.code == "PSYNC_S2105"
    assert error_of(hs256(claims())).code == "PSYNC_S2105"  # missing aud


@jwt_settings(SECRET=SECRET, AUDIENCE=["a", "b"])
def test_audience_list() -> None:
    verify_token(hs256(claims(aud="b")))
    verify_token(hs256(claims(aud=["x", "a"])))
    assert error_of(hs256(claims(aud=["x", "y"]))).code == "PSYNC_S2105"
    assert error_of(hs256(claims(aud=5))).code == "PSYNC_S2105"


@jwt_settings(SECRET=SECRET, AUDIENCE=None)
def test_audience_not_checked_when_unset() -> None:
    verify_token(hs256(claims(aud="anything")))


@jwt_settings(SECRET=SECRET, ISSUER="https://issuer.example")
def test_issuer() -> None:
    verify_token(hs256(claims(iss="https://issuer.example")))
    assert error_of(hs256(claims(iss="https://evil.example"))).code == "PSYNC_S2101"
    assert error_of(hs256(claims())).code == "PSYNC_S2101"


@jwt_settings(SECRET=SECRET, ALGORITHMS=["HS256", "none"])
def test_alg_none_always_rejected() -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims()).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}.{b64url(b'x')}"):
        assert error_of(token).code == "PSYNC_S2101"
    for alg in ("None", "NONE"):
        header = b64url(json.dumps({"alg": alg}).encode())
        assert error_of(f"{header}.{body}.").code == "PSYNC_S2101"


@jwt_settings(SECRET=SECRET * 2, ALGORITHMS=["HS256"])
def test_algorithm_not_configured_rejected() -> None:
    token = jwt.encode(claims(), SECRET * 2, algorithm="HS512")
    assert error_of(token).code == "PSYNC_S2101"


# --- asymmetric keys -----------------------------------------------------------------------------------------


def test_rs256_and_es256(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    with jwt_settings(PUBLIC_KEYS=[pem(rsa_key), pem(ec_key)]):
        assert verify_token(jwt.encode(claims(), rsa_key, algorithm="RS256")).user_id == "user-1"
        assert verify_token(jwt.encode(claims(sub="u2"), ec_key, algorithm="ES256")).user_id == "u2"


def test_ps256_when_allowed(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="PS256")
    with jwt_settings(PUBLIC_KEYS=[pem(rsa_key)]):
        assert error_of(token).code == "PSYNC_S2101"  # not in the default ALGORITHMS
    with jwt_settings(PUBLIC_KEYS=[pem(rsa_key)], ALGORITHMS=["PS256"]):
        verify_token(token)


def test_public_key_single_string_and_certificate_errors(rsa_key: rsa.RSAPrivateKey) -> None:
    with jwt_settings(PUBLIC_KEYS=pem(rsa_key)):
        verify_token(jwt.encode(claims(), rsa_key, algorithm="RS256"))
    with jwt_settings(PUBLIC_KEYS=["not a pem"]), pytest.raises(ImproperlyConfigured):
        verify_token(jwt.encode(claims(), rsa_key, algorithm="RS256"))


def test_wrong_asymmetric_key(rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey) -> None:
    with jwt_settings(PUBLIC_KEYS=[pem(rsa_key2)]):
        err = error_of(jwt.encode(claims(), rsa_key, algorithm="RS256"))
    assert (err.code, err.description) == ("PSYNC_S2101", "signature verification failed")


def test_key_type_must_match_algorithm(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    # Only an RSA key is configured: ES256 tokens find no key, whatever they claim.
    with jwt_settings(PUBLIC_KEYS=[pem(rsa_key)]):
        assert error_of(jwt.encode(claims(), ec_key, algorithm="ES256")).code == "PSYNC_S2101"
    # ES384 needs a P-384 key, not the configured P-256 one.
    with jwt_settings(PUBLIC_KEYS=[pem(ec_key)], ALGORITHMS=["ES384"]):
        p384 = ec.generate_private_key(ec.SECP384R1())
        assert error_of(jwt.encode(claims(), p384, algorithm="ES384")).code == "PSYNC_S2101"


def test_asymmetric_token_not_verified_by_secret(rsa_key: rsa.RSAPrivateKey) -> None:
    with jwt_settings(SECRET=SECRET):
        assert error_of(jwt.encode(claims(), rsa_key, algorithm="RS256")).code == "PSYNC_S2101"


@pytest.mark.parametrize("secret", [None, SECRET])
def test_algorithm_confusion_public_key_as_hmac_secret(
    rsa_key: rsa.RSAPrivateKey, secret: str | None
) -> None:
    public_pem = pem(rsa_key)
    with jwt_settings(SECRET=secret, PUBLIC_KEYS=[public_pem]):
        for candidate in (public_pem, public_pem.strip()):
            token = raw_hmac_token(claims(sub="admin"), candidate.encode())
            assert error_of(token).code == "PSYNC_S2101"
    with jwt_settings(SECRET=secret, PUBLIC_KEYS={"k1": public_pem}):
        token = raw_hmac_token(claims(sub="admin"), public_pem.encode())
        assert error_of(token).code == "PSYNC_S2101"


def test_kid_selection_with_dict(rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey) -> None:
    with jwt_settings(PUBLIC_KEYS={"one": pem(rsa_key), "two": pem(rsa_key2)}):
        assert verify_token(jwt.encode(claims(), rsa_key2, algorithm="RS256", headers={"kid": "two"}))
        assert verify_token(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "one"}))
        # Right key, wrong kid: only the named key is tried.
        err = error_of(jwt.encode(claims(), rsa_key2, algorithm="RS256", headers={"kid": "one"}))
        assert err.description == "signature verification failed"
        # Unknown kid: no key at all; the description does not name the kid.
        err = error_of(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "three"}))
        assert err.code == "PSYNC_S2101"
        assert "three" not in err.description
        # No kid: every key of the right type is tried.
        assert verify_token(jwt.encode(claims(), rsa_key2, algorithm="RS256"))
        # A non-string kid is malformed.
        header = b64url(json.dumps({"alg": "RS256", "kid": 1}).encode())
        body = b64url(json.dumps(claims()).encode())
        assert error_of(f"{header}.{body}.{b64url(b'sig')}").code == "PSYNC_S2101"


def test_asymmetric_claims_errors_are_mapped(rsa_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    with jwt_settings(PUBLIC_KEYS=[pem(rsa_key)], AUDIENCE="ps"):
        expired = jwt.encode(claims(aud="ps", iat=now - 900, exp=now - 300), rsa_key, algorithm="RS256")
        assert error_of(expired).code == "PSYNC_S2103"
        assert error_of(jwt.encode(claims(aud="x"), rsa_key, algorithm="RS256")).code == "PSYNC_S2105"


# --- JWKS ----------------------------------------------------------------------------------------------------

JWKS_URL = "https://auth.example.com/.well-known/jwks.json"


def jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else ECAlgorithm
    data = algorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


class FakeJwks:
    """Replaces ``PyJWKClient.fetch_data``: serves ``self.keys`` and counts fetches (no network)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.fail = False
        fake = self

        def fetch_data(client: jwt.PyJWKClient) -> Any:
            assert client.uri == JWKS_URL
            if fake.fail:
                raise jwt.PyJWKClientConnectionError("connection refused")
            fake.fetches += 1
            if hasattr(client, "_last_successful_fetch"):
                client._last_successful_fetch = time.monotonic()  # like the real fetch_data
            return {"keys": [dict(k) for k in fake.keys]}

        monkeypatch.setattr(jwt.PyJWKClient, "fetch_data", fetch_data)


@pytest.fixture
def fake_jwks(monkeypatch: pytest.MonkeyPatch) -> FakeJwks:
    return FakeJwks(monkeypatch)


def test_jwks_verifies_and_caches(fake_jwks: FakeJwks, rsa_key: rsa.RSAPrivateKey, ec_key: Any) -> None:
    fake_jwks.keys = [jwk(rsa_key, "r1", "RS256"), jwk(ec_key, "e1", "ES256")]
    with jwt_settings(JWKS_URL=JWKS_URL):
        assert verify_token(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "r1"}))
        assert verify_token(jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "e1"}))
        # Without a kid, every signing key of the right type is tried.
        assert verify_token(jwt.encode(claims(), ec_key, algorithm="ES256"))
        assert fake_jwks.fetches == 1
        # Same client object for the same URL.
        assert auth.get_jwks_client(JWKS_URL, 300) is auth.get_jwks_client(JWKS_URL, 300)


def test_jwks_refresh_on_unknown_kid(
    fake_jwks: FakeJwks, monkeypatch: pytest.MonkeyPatch, rsa_key: Any, rsa_key2: Any
) -> None:
    monkeypatch.setattr(auth, "JWKS_REFRESH_COOLDOWN_SECONDS", 0.0)
    fake_jwks.keys = [jwk(rsa_key, "old", "RS256")]
    with jwt_settings(JWKS_URL=JWKS_URL, JWKS_CACHE_SECONDS=3600):
        verify_token(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "old"}))
        assert fake_jwks.fetches == 1
        # Key rotation: the token names a kid the cached set does not have -> one refetch.
        fake_jwks.keys = [jwk(rsa_key, "old", "RS256"), jwk(rsa_key2, "new", "RS256")]
        verify_token(jwt.encode(claims(), rsa_key2, algorithm="RS256", headers={"kid": "new"}))
        assert fake_jwks.fetches == 2
        verify_token(jwt.encode(claims(), rsa_key2, algorithm="RS256", headers={"kid": "new"}))
        assert fake_jwks.fetches == 2
        # A kid that is still unknown after the refetch is rejected.
        err = error_of(jwt.encode(claims(), rsa_key2, algorithm="RS256", headers={"kid": "gone"}))
        assert err.code == "PSYNC_S2101"
        assert fake_jwks.fetches == 3


def test_jwks_unknown_kid_refetch_is_rate_limited(fake_jwks: FakeJwks, rsa_key: Any) -> None:
    fake_jwks.keys = [jwk(rsa_key, "k", "RS256")]
    with jwt_settings(JWKS_URL=JWKS_URL):
        verify_token(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k"}))
        for kid in ("x1", "x2", "x3"):
            assert error_of(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": kid})).code == (
                "PSYNC_S2101"
            )
        assert fake_jwks.fetches == 1


def test_jwks_cache_seconds_change_makes_new_client(fake_jwks: FakeJwks, rsa_key: Any) -> None:
    fake_jwks.keys = [jwk(rsa_key, "k", "RS256")]
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k"})
    with jwt_settings(JWKS_URL=JWKS_URL, JWKS_CACHE_SECONDS=300):
        verify_token(token)
    with jwt_settings(JWKS_URL=JWKS_URL, JWKS_CACHE_SECONDS=60):
        verify_token(token)
    assert fake_jwks.fetches == 2


def test_jwks_fetch_failure_is_401(fake_jwks: FakeJwks, rsa_key: Any) -> None:
    fake_jwks.fail = True
    with jwt_settings(JWKS_URL=JWKS_URL):
        err = error_of(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k"}))
    assert err.code == "PSYNC_S2101"


def test_jwks_key_type_and_alg_must_match(fake_jwks: FakeJwks, rsa_key: Any, ec_key: Any) -> None:
    # The JWKS declares the RSA key for PS256 only; an RS256 token with that kid is refused.
    fake_jwks.keys = [jwk(rsa_key, "r", "PS256"), jwk(ec_key, "e", "ES256")]
    with jwt_settings(JWKS_URL=JWKS_URL):
        assert error_of(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "r"})).code == (
            "PSYNC_S2101"
        )
        # kid of the EC key on an RS256 token: wrong key type.
        assert error_of(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "e"})).code == (
            "PSYNC_S2101"
        )


def test_jwks_symmetric_key_never_used(fake_jwks: FakeJwks) -> None:
    secret = b"jwks-published-hmac-secret-0123456789"
    fake_jwks.keys = [{"kty": "oct", "k": b64url(secret), "kid": "h", "alg": "HS256", "use": "sig"}]
    with jwt_settings(JWKS_URL=JWKS_URL):
        token = jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": "h"})
        assert error_of(token).code == "PSYNC_S2101"


def test_static_keys_tried_before_jwks(fake_jwks: FakeJwks, rsa_key: Any) -> None:
    with jwt_settings(PUBLIC_KEYS={"any": pem(rsa_key)}, JWKS_URL=JWKS_URL):
        verify_token(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "any"}))
    assert fake_jwks.fetches == 0


# --- make_token ----------------------------------------------------------------------------------------------


@jwt_settings(SECRET=SECRET, AUDIENCE=["powersync", "other"], ISSUER="me", KID="dev", DEFAULT_TTL=120)
def test_make_token_round_trip() -> None:
    token = make_token("user-9", claims={"parameters": {"team": 3}})
    assert jwt.get_unverified_header(token)["kid"] == "dev"
    result = verify_token(token)
    assert result.user_id == "user-9"
    assert result.claims["aud"] == "powersync"
    assert result.claims["iss"] == "me"
    assert result.claims["exp"] - result.claims["iat"] == 120
    assert result.parameters == {"team": 3}


@jwt_settings(SECRET=SECRET)
def test_make_token_ttl_and_errors() -> None:
    result = verify_token(make_token("u", ttl=30))
    assert result.claims["exp"] - result.claims["iat"] == 30
    assert "aud" not in result.claims and "iss" not in result.claims
    for bad in (
        lambda: make_token("u", ttl=0),
        lambda: make_token("u", ttl=86401),
        lambda: make_token(""),
        lambda: make_token("u", claims={"sub": "other"}),
        lambda: make_token("u", claims={"parameters": [1]}),
    ):
        with pytest.raises(ValueError):
            bad()


def test_make_token_without_secret() -> None:
    with jwt_settings(SECRET=None), pytest.raises(ImproperlyConfigured):
        make_token("u")
    with jwt_settings(SECRET=SECRET, ALGORITHMS=["RS256"]), pytest.raises(ImproperlyConfigured):
        make_token("u")


# --- powersync_token command ---------------------------------------------------------------------------------


def run_command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(Command(), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@jwt_settings(SECRET=SECRET, AUDIENCE="powersync")
def test_command_prints_token_last() -> None:
    out, err = run_command(
        "user-5",
        "--ttl",
        "90",
        "--claim",
        'parameters={"team": 1}',
        "--claim",
        "role=editor",
        "--claim",
        "n=5",
    )
    token = out.strip().splitlines()[-1]
    result = verify_token(token)
    assert result.user_id == "user-5"
    assert result.claims["exp"] - result.claims["iat"] == 90
    assert result.claims["parameters"] == {"team": 1}
    assert result.claims["role"] == "editor"
    assert result.claims["n"] == 5
    assert result.claims["aud"] == "powersync"
    assert "user-5" in err


@jwt_settings(SECRET=SECRET)
@pytest.mark.parametrize(
    "args", [("u", "--claim", "novalue"), ("u", "--claim", "=1"), ("u", "--ttl", "-5"), ("", "--ttl", "5")]
)
def test_command_bad_input(args: tuple[str, ...]) -> None:
    with pytest.raises(CommandError):
        run_command(*args)


@jwt_settings(SECRET=None)
def test_command_without_secret() -> None:
    with pytest.raises(CommandError, match="SECRET"):
        run_command("u")


# --- safe defaults: audience, kid, secret length (issue 10) --------------------------------------------------


def _check_ids(**jwt_config: Any) -> set[str]:
    from django.core import checks

    with override_settings(POWERSYNC={"JWT": jwt_config}):
        return {m.id for m in checks.run_checks() if m.id and m.id.startswith("powersync_django.")}


def test_public_keys_without_audience_reject_foreign_tokens(rsa_key: rsa.RSAPrivateKey) -> None:
    foreign = jwt.encode(claims(aud="some-other-app", iss="elsewhere"), rsa_key, algorithm="RS256")
    with override_settings(POWERSYNC={"JWT": {"PUBLIC_KEYS": [pem(rsa_key)]}}):
        err = error_of(foreign)
        assert (err.code, err.status) == ("PSYNC_S2105", 401)
        assert "powersync_django.E013" in _check_ids(PUBLIC_KEYS=[pem(rsa_key)])
    with override_settings(POWERSYNC={"JWT": {"PUBLIC_KEYS": [pem(rsa_key)], "AUDIENCE": "powersync",
                                              "ISSUER": "https://idp.example"}}):
        assert error_of(foreign).status == 401
        other_audience = jwt.encode(claims(aud="some-other-app", iss="https://idp.example"), rsa_key,
                                    algorithm="RS256")
        assert error_of(other_audience).code == "PSYNC_S2105"
        other_issuer = jwt.encode(claims(aud="powersync", iss="elsewhere"), rsa_key, algorithm="RS256")
        assert error_of(other_issuer).code == "PSYNC_S2101"
        ok = jwt.encode(claims(aud="powersync", iss="https://idp.example"), rsa_key, algorithm="RS256")
        assert verify_token(ok).user_id == "user-1"
        assert "powersync_django.E013" not in _check_ids(PUBLIC_KEYS=[pem(rsa_key)], AUDIENCE="powersync")
    # Explicitly disabled: documented opt-out for a key set no other application uses.
    with override_settings(POWERSYNC={"JWT": {"PUBLIC_KEYS": [pem(rsa_key)], "VERIFY_AUDIENCE": False}}):
        assert verify_token(foreign).user_id == "user-1"
        assert "powersync_django.E013" not in _check_ids(PUBLIC_KEYS=[pem(rsa_key)], VERIFY_AUDIENCE=False)


def test_jwks_without_audience_is_a_check_error() -> None:
    assert "powersync_django.E013" in _check_ids(JWKS_URL=JWKS_URL)
    assert "powersync_django.E013" not in _check_ids(JWKS_URL=JWKS_URL, AUDIENCE=["a", "b"])
    # A shared secret alone does not need an audience.
    assert "powersync_django.E013" not in _check_ids(SECRET=SECRET)


def test_short_hs256_secret_warns() -> None:
    assert "powersync_django.W014" in _check_ids(SECRET="too-short-secret")
    assert "powersync_django.W014" not in _check_ids(SECRET="x" * 32)


def test_token_naming_unknown_kid_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    with jwt_settings(SECRET=SECRET, KID="dev"):
        assert verify_token(hs256(claims(), headers={"kid": "dev"}))
        assert verify_token(hs256(claims()))
        assert error_of(hs256(claims(), headers={"kid": "other"})).status == 401
    # A secret configured without a kid verifies no token that names one.
    with jwt_settings(SECRET=SECRET):
        assert error_of(hs256(claims(), headers={"kid": "whatever"})).code == "PSYNC_S2101"
    with jwt_settings(PUBLIC_KEYS=[pem(rsa_key)]):
        assert verify_token(jwt.encode(claims(), rsa_key, algorithm="RS256"))
        err = error_of(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "unknown"}))
        assert (err.code, err.status) == ("PSYNC_S2101", 401)


@jwt_settings(SECRET=SECRET)
def test_sub_is_bounded() -> None:
    assert verify_token(hs256(claims(sub="u" * auth.MAX_SUB_LENGTH))).user_id == "u" * auth.MAX_SUB_LENGTH
    assert error_of(hs256(claims(sub="u" * (auth.MAX_SUB_LENGTH + 1)))).code == "PSYNC_S2101"
    assert error_of(hs256(claims(sub="a\x00b"))).code == "PSYNC_S2101"
