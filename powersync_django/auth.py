"""JWT authentication of PowerSync clients (protocol §4) and development tokens.

Tokens are verified with the keys of ``POWERSYNC['JWT']``:

- ``SECRET`` verifies HS256/HS384/HS512 tokens, and only those;
- ``PUBLIC_KEYS`` (PEM, a list or ``{kid: PEM}``) and ``JWKS_URL`` verify RS*/PS*/ES*/EdDSA tokens, and only
  with keys of the matching type, so a public key can never act as an HMAC secret (algorithm confusion).

Failures raise :class:`AuthError`, whose :meth:`AuthError.as_json` is the reference service's 401 body.
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from django.core.exceptions import ImproperlyConfigured

from .conf import get_config

logger = logging.getLogger(__name__)

# Error codes (protocol §12.1).
PSYNC_S2101 = "PSYNC_S2101"  # generic auth failure
PSYNC_S2102 = "PSYNC_S2102"  # signature could not be verified (unused: the reference answers S2101)
PSYNC_S2103 = "PSYNC_S2103"  # token expired
PSYNC_S2104 = "PSYNC_S2104"  # token lifetime too long
PSYNC_S2105 = "PSYNC_S2105"  # audience mismatch / missing
PSYNC_S2106 = "PSYNC_S2106"  # no token / unknown scheme

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
OKP_ALGORITHMS = frozenset({"EdDSA"})
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | RSA_ALGORITHMS | frozenset(EC_ALGORITHMS) | OKP_ALGORITHMS

# Tokens longer than this are rejected before parsing.
MAX_TOKEN_LENGTH = 16 * 1024
# Longest accepted ``sub`` claim (it is stored with write checkpoints and used as a bucket parameter).
MAX_SUB_LENGTH = 255
# Least time between two JWKS fetches forced by tokens naming an unknown `kid` (limits fetch floods).
JWKS_REFRESH_COOLDOWN_SECONDS = 5.0
JWKS_TIMEOUT_SECONDS = 10.0

_HEADER_RE = re.compile(r"^\s*(?:token|bearer)\s+(\S+)\s*$", re.IGNORECASE)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


@dataclass(frozen=True)
class TokenClaims:
    """A verified token: the user id (``sub``), the expiry (``exp``, epoch seconds) and all claims."""

    user_id: str
    expires_at: float
    claims: dict[str, Any]

    @property
    def parameters(self) -> dict[str, Any]:
        """The ``parameters`` claim (an object), or ``{}``."""
        return self.claims.get("parameters") or {}

    def expires_in(self, now: float | None = None) -> int:
        """Whole seconds until expiry, never negative."""
        now = time.time() if now is None else now
        return max(0, int(self.expires_at - now))


class AuthError(Exception):
    """An authentication failure, answered with HTTP 401 and :meth:`as_json`.

    ``description`` is sent to the client and stays generic; ``detail`` is for server logs only.
    """

    name = "AuthorizationError"

    def __init__(self, code: str, description: str, *, status: int = 401, detail: str | None = None) -> None:
        super().__init__(f"[{code}] {description}")
        self.code = code
        self.status = status
        self.description = description
        self.detail = detail

    def as_json(self) -> dict[str, Any]:
        """The error body of the reference service: ``{"error": {code, status, description, name}}``."""
        return {
            "error": {
                "code": self.code,
                "status": self.status,
                "description": self.description,
                "name": self.name,
            }
        }


def parse_authorization_header(value: str | None) -> str:
    """Return the token of an ``Authorization: Token <jwt>`` or ``Bearer <jwt>`` header value."""
    match = _HEADER_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise AuthError(PSYNC_S2106, "Authentication required")
    return match.group(1)


# --- keys -------------------------------------------------------------------------------------------------


def _jwt_config() -> dict[str, Any]:
    return get_config()["JWT"]


def _allowed_algorithms(cfg: dict[str, Any]) -> frozenset[str]:
    algorithms = cfg["ALGORITHMS"]
    if isinstance(algorithms, str):
        algorithms = [algorithms]
    # `none` and anything unknown are never accepted, whatever the setting says.
    return frozenset(algorithms or ()) & SUPPORTED_ALGORITHMS


def _key_fits(alg: str, key: Any) -> bool:
    """Whether an asymmetric public key is of the type (and curve) that ``alg`` needs."""
    if alg in RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    if alg in EC_ALGORITHMS:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, EC_ALGORITHMS[alg])
    if alg in OKP_ALGORITHMS:
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def _normalize_public_keys(value: Any) -> tuple[tuple[str | None, str], ...]:
    if not value:
        return ()
    if isinstance(value, str | bytes):
        value = [value]
    if isinstance(value, dict):
        items = [(str(kid), pem) for kid, pem in value.items()]
    elif isinstance(value, list | tuple):
        items = [(None, pem) for pem in value]
    else:
        raise ImproperlyConfigured(
            "POWERSYNC['JWT']['PUBLIC_KEYS'] must be a list of PEM strings or {kid: PEM}."
        )
    result = []
    for kid, pem in items:
        if isinstance(pem, bytes):
            pem = pem.decode("ascii", "replace")
        if not isinstance(pem, str):
            raise ImproperlyConfigured("POWERSYNC['JWT']['PUBLIC_KEYS'] entries must be PEM strings.")
        result.append((kid, pem))
    return tuple(result)


@lru_cache(maxsize=16)
def _load_public_keys(spec: tuple[tuple[str | None, str], ...]) -> tuple[tuple[str | None, Any], ...]:
    loaded = []
    for index, (kid, pem) in enumerate(spec):
        name = repr(kid) if kid is not None else f"#{index}"
        data = pem.strip().encode()
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                key: Any = x509.load_pem_x509_certificate(data).public_key()
            else:
                key = load_pem_public_key(data)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"POWERSYNC['JWT']['PUBLIC_KEYS'] entry {name} is not a PEM public key or certificate: {exc}"
            ) from exc
        if not isinstance(key, PublicKey):
            raise ImproperlyConfigured(
                f"POWERSYNC['JWT']['PUBLIC_KEYS'] entry {name}: unsupported key type {type(key).__name__}."
            )
        loaded.append((kid, key))
    return tuple(loaded)


_jwks_clients: dict[str, tuple[float, jwt.PyJWKClient]] = {}
_jwks_lock = threading.Lock()


def get_jwks_client(url: str, cache_seconds: float) -> jwt.PyJWKClient:
    """The process-wide :class:`jwt.PyJWKClient` of ``url`` (its key set is cached ``cache_seconds``)."""
    with _jwks_lock:
        entry = _jwks_clients.get(url)
        if entry is None or entry[0] != cache_seconds:
            kwargs: dict[str, Any] = {}
            if "cooldown_duration" in inspect.signature(jwt.PyJWKClient).parameters:  # PyJWT >= 2.12
                kwargs["cooldown_duration"] = JWKS_REFRESH_COOLDOWN_SECONDS
            client = jwt.PyJWKClient(
                url,
                cache_jwk_set=cache_seconds > 0,
                lifespan=cache_seconds if cache_seconds > 0 else 300,
                headers={"User-Agent": "powersync-django"},
                timeout=JWKS_TIMEOUT_SECONDS,
                **kwargs,
            )
            entry = (cache_seconds, client)
            _jwks_clients[url] = entry
        return entry[1]


def clear_jwks_clients() -> None:
    """Forget all JWKS clients and their cached key sets (for tests)."""
    with _jwks_lock:
        _jwks_clients.clear()


def _jwks_keys(alg: str, kid: str | None, cfg: dict[str, Any]) -> list[Any]:
    url = cfg["JWKS_URL"]
    try:
        client = get_jwks_client(url, float(cfg["JWKS_CACHE_SECONDS"] or 0))
        # With a `kid`, PyJWKClient refetches the set once when the kid is unknown (rate-limited).
        jwks = [client.get_signing_key(kid)] if kid is not None else client.get_signing_keys()
    except jwt.PyJWKClientConnectionError as exc:
        logger.warning("Could not fetch the JWKS from %s: %s", url, exc)
        return []
    except (jwt.PyJWTError, ValueError, OSError) as exc:
        logger.info("No usable JWKS key for kid %r: %s", kid, exc)
        return []
    keys = []
    for jwk in jwks:
        declared = getattr(jwk, "_jwk_data", {}).get("alg")
        if declared is not None and declared != alg:
            continue
        if _key_fits(alg, jwk.key):
            keys.append(jwk.key)
    return keys


def _kid_fits(key_kid: str | None, kid: str | None) -> bool:
    """A token naming a ``kid`` is verified only by the key configured under that kid; one without by any key."""
    return kid is None or key_kid == kid


def _candidate_keys(alg: str, kid: str | None, cfg: dict[str, Any]) -> Iterator[Any]:
    """Keys that may verify a token of ``alg``/``kid``, cheapest first (the JWKS is only fetched if reached)."""
    if alg in HMAC_ALGORITHMS:
        if cfg["SECRET"] and _kid_fits(cfg["KID"] or None, kid):
            yield cfg["SECRET"]
        return
    for key_kid, key in _load_public_keys(_normalize_public_keys(cfg["PUBLIC_KEYS"])):
        if _kid_fits(key_kid, kid) and _key_fits(alg, key):
            yield key
    if cfg["JWKS_URL"]:
        yield from _jwks_keys(alg, kid, cfg)


def audience_required(cfg: dict[str, Any]) -> bool:
    """Whether tokens verified by public keys (``PUBLIC_KEYS``/``JWKS_URL``) must carry a configured ``aud``.

    True unless ``VERIFY_AUDIENCE`` is explicitly False (for a key set that only this application uses).
    """
    return cfg.get("VERIFY_AUDIENCE", True) is not False


# --- verification -----------------------------------------------------------------------------------------


def _map_error(exc: jwt.PyJWTError) -> AuthError:
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, jwt.ExpiredSignatureError):
        return AuthError(PSYNC_S2103, "JWT has expired", detail=detail)
    if isinstance(exc, jwt.InvalidAudienceError):
        return AuthError(PSYNC_S2105, 'Unexpected "aud" claim value', detail=detail)
    if isinstance(exc, jwt.MissingRequiredClaimError):
        if exc.claim == "aud":
            return AuthError(PSYNC_S2105, 'Missing "aud" claim', detail=detail)
        return AuthError(PSYNC_S2101, f'Missing "{exc.claim}" claim', detail=detail)
    if isinstance(exc, jwt.InvalidIssuerError):
        return AuthError(PSYNC_S2101, 'Unexpected "iss" claim value', detail=detail)
    if isinstance(exc, jwt.ImmatureSignatureError):
        return AuthError(PSYNC_S2101, "JWT is not yet valid", detail=detail)
    if isinstance(exc, jwt.InvalidSignatureError):
        return AuthError(PSYNC_S2101, "signature verification failed", detail=detail)
    return AuthError(PSYNC_S2101, "Invalid JWT", detail=detail)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def verify_token(token: str) -> TokenClaims:
    """Verify a JWT against ``POWERSYNC['JWT']`` and return its claims, or raise :class:`AuthError`.

    May fetch the JWKS over the network (blocking); async callers should run it in a thread.
    """
    cfg = _jwt_config()
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise AuthError(PSYNC_S2101, "Invalid JWT", detail="empty, oversized or non-string token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise _map_error(exc) from None
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in _allowed_algorithms(cfg):
        raise AuthError(PSYNC_S2101, "Unsupported JWT algorithm", detail=f"alg {alg!r}")
    if kid is not None and not isinstance(kid, str):
        raise AuthError(PSYNC_S2101, "Invalid JWT", detail="non-string kid")

    audience = cfg["AUDIENCE"] or None
    if isinstance(audience, tuple):
        audience = list(audience)
    public = bool(cfg["PUBLIC_KEYS"] or cfg["JWKS_URL"])
    if audience is None and public and alg not in HMAC_ALGORITHMS and audience_required(cfg):
        # Fail closed: a key set shared with other applications (Firebase, Auth0, Supabase) would otherwise
        # accept their tokens here. System check powersync_django.E013 reports the same at startup.
        logger.error("powersync: rejecting a %s token: POWERSYNC['JWT']['AUDIENCE'] is not set (E013)", alg)
        raise AuthError(PSYNC_S2105, "No audience is configured to verify this token against",
                        detail="set POWERSYNC['JWT']['AUDIENCE'] or VERIFY_AUDIENCE=False")
    require = ["sub", "exp", "iat"] + (["aud"] if audience else [])

    payload: dict[str, Any] | None = None
    tried = 0
    for key in _candidate_keys(alg, kid, cfg):
        tried += 1
        try:
            payload = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                options={"require": require, "verify_aud": audience is not None},
                audience=audience,
                issuer=cfg["ISSUER"] or None,
                leeway=cfg["LEEWAY"] or 0,
            )
        except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
            continue  # try the next key
        except jwt.PyJWTError as exc:
            raise _map_error(exc) from None
        break
    if payload is None:
        if tried == 0:
            raise AuthError(
                PSYNC_S2101, "Could not find an appropriate key", detail=f"alg {alg}, kid {kid!r}"
            )
        raise AuthError(PSYNC_S2101, "signature verification failed", detail=f"alg {alg}, kid {kid!r}")

    sub, exp, iat = payload.get("sub"), payload.get("exp"), payload.get("iat")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH or "\x00" in sub:
        raise AuthError(PSYNC_S2101, 'Invalid "sub" claim')
    if not _is_number(exp) or not _is_number(iat):
        raise AuthError(PSYNC_S2101, 'Invalid "exp" or "iat" claim')
    max_lifetime = cfg["MAX_LIFETIME"]
    if max_lifetime is not None and exp - iat > max_lifetime:
        raise AuthError(PSYNC_S2104, f"Token must expire in a maximum of {max_lifetime} seconds")
    if "parameters" in payload and not isinstance(payload["parameters"], dict):
        raise AuthError(PSYNC_S2101, 'Invalid "parameters" claim: must be an object')
    return TokenClaims(user_id=sub, expires_at=float(exp), claims=payload)


# --- tokens -----------------------------------------------------------------------------------------------

_RESERVED_CLAIMS = frozenset({"sub", "iat", "exp"})


def make_token(user_id: str, ttl: int | None = None, claims: dict[str, Any] | None = None) -> str:
    """Sign an HS256 token for ``user_id`` with ``POWERSYNC['JWT']['SECRET']`` (development and tests).

    ``ttl`` defaults to ``DEFAULT_TTL``; ``claims`` are added to the payload and may override ``aud``/``iss``.
    Raises :class:`ImproperlyConfigured` without a usable secret and ``ValueError`` for bad arguments.
    """
    cfg = _jwt_config()
    secret = cfg["SECRET"]
    if not secret:
        raise ImproperlyConfigured(
            "POWERSYNC['JWT']['SECRET'] is not set: it is needed to sign HS256 tokens."
        )
    if "HS256" not in _allowed_algorithms(cfg):
        raise ImproperlyConfigured(
            "POWERSYNC['JWT']['ALGORITHMS'] does not include HS256: tokens signed with SECRET would be rejected."
        )
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("The user id must be a non-empty string.")
    ttl = cfg["DEFAULT_TTL"] if ttl is None else ttl
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        raise ValueError(f"The token lifetime must be a positive number of seconds, not {ttl!r}.")
    max_lifetime = cfg["MAX_LIFETIME"]
    if max_lifetime is not None and ttl > max_lifetime:
        raise ValueError(
            f"The token lifetime {ttl}s exceeds POWERSYNC['JWT']['MAX_LIFETIME'] ({max_lifetime}s)."
        )
    extra = dict(claims or {})
    reserved = sorted(_RESERVED_CLAIMS & extra.keys())
    if reserved:
        raise ValueError(f"Claims {', '.join(reserved)} are set by make_token and cannot be given.")
    if "parameters" in extra and not isinstance(extra["parameters"], dict):
        raise ValueError('The "parameters" claim must be an object.')

    now = int(time.time())
    payload: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl}
    audience = cfg["AUDIENCE"]
    if isinstance(audience, list | tuple):
        audience = audience[0] if audience else None
    if audience:
        payload["aud"] = audience
    issuer = cfg["ISSUER"]
    if isinstance(issuer, list | tuple):
        issuer = issuer[0] if issuer else None
    if issuer:
        payload["iss"] = issuer
    payload.update(extra)
    headers = {"kid": cfg["KID"]} if cfg["KID"] else None
    try:
        return jwt.encode(payload, secret, algorithm="HS256", headers=headers)
    except jwt.InvalidKeyError as exc:
        raise ImproperlyConfigured(
            f"POWERSYNC['JWT']['SECRET'] cannot be used as an HMAC secret: {exc}"
        ) from exc
