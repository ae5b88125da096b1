"""All settings of powersync_django, read from ``settings.POWERSYNC`` over these defaults.

Nothing else in the package reads ``settings.POWERSYNC``: call :func:`get_config`.
The cache is cleared on Django's ``setting_changed`` signal, so ``override_settings`` works in tests.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    # Bucket definitions, see the README ("Bucket definitions").
    "BUCKETS": {},
    # Sync Streams, see the README ("Sync Streams").
    "STREAMS": {},
    "JWT": {
        # HS256 shared secret (str, at least 32 bytes: check W014). Used for verification and by `powersync_token`.
        "SECRET": None,
        # PEM public keys for RS256/ES256 tokens: a list of PEM strings or {kid: PEM}.
        "PUBLIC_KEYS": None,
        # A JWKS URL; keys are cached and refreshed when a token names an unknown `kid`.
        "JWKS_URL": None,
        "JWKS_CACHE_SECONDS": 300,
        # Accepted algorithms. `none` is never accepted.
        "ALGORITHMS": ["HS256", "RS256", "ES256"],
        # Expected audience (str or list of str). Required for tokens verified by PUBLIC_KEYS/JWKS_URL (a key set
        # shared with other applications would otherwise accept their tokens; check E013). With SECRET only,
        # None means the `aud` claim is not checked.
        "AUDIENCE": None,
        # False: accept public-key tokens without an AUDIENCE (only for a key set no other application uses).
        "VERIFY_AUDIENCE": True,
        "ISSUER": None,
        # Clock tolerance for exp/iat/nbf, in seconds.
        "LEEWAY": 60,
        # Largest accepted `exp - iat`, in seconds (the reference service uses one day).
        "MAX_LIFETIME": 86400,
        # Lifetime of tokens made by `manage.py powersync_token`.
        "DEFAULT_TTL": 3600,
        # `kid` of SECRET: written by `powersync_token`; when set, HS256 tokens naming another kid are rejected.
        # (A token naming a kid is only verified by the key configured under that kid.)
        "KID": None,
    },
    # GET <endpoint>/api/token: tokens for logged-in (session) users, for a web app's fetchCredentials.
    "TOKEN_VIEW": {
        "ENABLED": True,
        # Lifetime in seconds (None: JWT.DEFAULT_TTL).
        "TTL": None,
        # Dotted path to callable(user) -> dict of extra claims (e.g. parameters), or None.
        "CLAIMS": None,
    },
    # How datetimes are written into row data: "space" (reference service: `2026-11-26 05:44:47.992823Z`)
    # or "iso" (`2026-11-26T05:44:47.992823Z`).
    "DATETIME_FORMAT": "space",
    # Run the replicator in a background thread of every ASGI server process (one at a time works,
    # chosen by a database lease). Set False when you run `manage.py powersync_replicate` instead.
    "REPLICATOR_IN_PROCESS": True,
    # Outbox rows replicated per transaction (SQLite: at most 1000, its write lock is held meanwhile).
    "REPLICATION_BATCH_SIZE": 5000,
    # How often the SQLite backend polls for outbox rows / new checkpoints (seconds).
    "POLL_INTERVAL": 0.02,
    # Seconds a replicator lease lasts without renewal.
    "LEASE_SECONDS": 10,
    # How server processes learn of new checkpoints: None (PostgreSQL LISTEN; SQLite: polling) or "channels"
    # (announced over the Channels layer NOTIFY_CHANNEL_LAYER, e.g. channels_redis; see README "Production").
    "NOTIFY": None,
    "NOTIFY_CHANNEL_LAYER": "default",
    # Sync stream limits.
    "MAX_BUCKETS_PER_CONNECTION": 1000,
    # Explicit stream subscriptions (`streams.subscriptions`) accepted per sync request; more: PSYNC_S2305.
    "MAX_SUBSCRIPTIONS_PER_CONNECTION": 100,
    "MAX_REQUEST_BYTES": 1024 * 1024,
    "OPS_PER_DATA_LINE": 1000,
    "KEEPALIVE_SECONDS": 20,
    # One read per change shared by every stream of the process that holds a changed bucket (fanout.py);
    # False: each stream reads its own (the same lines either way).
    "SHARED_READS": True,
    # Ops one shared read keeps in memory (all its buckets); buckets past it are read by each stream.
    "SHARED_READ_MAX_OPS": 20000,
    # Concurrent database reads of sync sessions (threads per process).
    "READ_THREADS": 4,
    # Write transactions of write checkpoints, on their own threads so they never hold up stream reads.
    "WRITE_THREADS": 2,
    # Jobs allowed to wait for a read / write thread before new streams / write checkpoints get a 503
    # with Retry-After (running streams are never refused).
    "MAX_QUEUED_READS": 100,
    "MAX_QUEUED_WRITES": 50,
    # Uploads in progress per process (each holds a thread and a database connection); beyond: 503.
    "MAX_CONCURRENT_UPLOADS": 16,
    # Sync streams (HTTP and WebSocket) open at once per process; beyond: 429 PSYNC_S2304 with Retry-After.
    # None: no cap.
    "MAX_CONCURRENT_STREAMS": 5000,
    # Sync streams one user (token ``sub``) may have open at once per process; beyond: 429 PSYNC_S2304, so
    # that one account cannot take every slot of MAX_CONCURRENT_STREAMS. None: no per-user cap.
    "MAX_STREAMS_PER_USER": 20,
    "RETRY_AFTER_SECONDS": 2,
    # Under daphne (runserver): most bytes of one HTTP stream buffered by the server before the stream
    # waits for the client to read (other servers apply their own flow control; see "Production server").
    "STREAM_WINDOW_BYTES": 1024 * 1024,
    # CORS for browser clients: "*" or a list of allowed origins.
    "CORS_ALLOWED_ORIGINS": "*",
    # Gzip level of compressed sync streams (1 = fastest).
    "GZIP_LEVEL": 1,
    # Per-user request rates, counted in Django's cache (share the cache between processes for a global limit):
    # "N/second|minute|hour|day" (or "N/30s"), (count, seconds) or None for no limit. Beyond them: 429 with
    # Retry-After. A write checkpoint is a replication batch plus a wake-up of every stream; the SDK asks for one
    # after each upload queue drain.
    "RATE_LIMITS": {
        "WRITE_CHECKPOINT": "300/minute",
        "UPLOAD": "1200/minute",
        "CACHE": "default",
    },
    # Upload endpoint `api/upload` (see README "Uploads"). Values may be dotted paths or the objects.
    "UPLOAD": {
        # {client table: "dotted.path.to.Serializer"}; default: a ModelSerializer of the synced columns.
        # A table no bucket definition produces (an insert-only table) is writable through a ModelSerializer here.
        "SERIALIZERS": {},
        # {client table: "dotted.path.to.callable(user, op, instance_or_None, data) -> bool"}; "*" for all
        # other tables. Tables without an entry reject every write (403); `powersync_django.upload.allow_any`
        # allows all. `data` is the validated data; raising PermissionDenied also means False.
        "PERMISSIONS": {},
        # {client table: "dotted.path.to.callable(user, op, data) -> data"}, run before validation (PUT/PATCH)
        # to force server-side values (e.g. an owner from the token).
        "PREPARE": {},
        # The user hooks get: the token's `sub` looked up in this field of get_user_model() (a unique field; the
        # user instance gets `.claims`, `.token` and `.user_id` = sub); unknown sub: 401, inactive user: 403.
        # None: no lookup, hooks get a `powersync_django.users.TokenUser` (user ids that are not Django users).
        "USER_LOOKUP_FIELD": "pk",
        # Largest batch (operations) and request body (bytes); beyond them: 413.
        "MAX_OPERATIONS": 1000,
        "MAX_BYTES": 5 * 1024 * 1024,
        # A PATCH of a row that does not exist: "ignore" (success, nothing written) or "error" (400 with a
        # `not_found` operation error).
        "PATCH_MISSING": "ignore",
    },
    # <endpoint>/metrics (Prometheus). Allowed with `Authorization: Bearer <TOKEN>` when TOKEN is set, and
    # from loopback addresses and settings.INTERNAL_IPS when ALLOW_INTERNAL_IPS (see README "Operations").
    "METRICS": {
        "TOKEN": None,
        "ALLOW_INTERNAL_IPS": True,
    },
    # Per-process heartbeats for the admin status page: CACHE names a cache all server processes share
    # (None: off); each process with sync streams writes its stream counts there every SECONDS.
    "HEARTBEAT": {
        "CACHE": None,
        "SECONDS": 15,
    },
}

REMOVED_OR_RENAMED: dict[str, str] = {
    "BUCKET_DEFINITIONS": "Use 'BUCKETS'.",
    "JWT_SECRET": "Use POWERSYNC['JWT']['SECRET'].",
}


def _merge(defaults: dict[str, Any], user: dict[str, Any], path: str) -> dict[str, Any]:
    merged = copy.deepcopy(defaults)
    for key, value in user.items():
        if key not in defaults:
            hint = REMOVED_OR_RENAMED.get(key, f"Known keys: {', '.join(sorted(defaults))}.")
            raise ImproperlyConfigured(f"Unknown setting {path}['{key}']. {hint}")
        if isinstance(defaults[key], dict) and defaults[key] and isinstance(value, dict):
            merged[key] = _merge(defaults[key], value, f"{path}['{key}']")
        else:
            merged[key] = value
    return merged


@lru_cache(maxsize=1)
def get_config() -> dict[str, Any]:
    """Return the effective configuration: ``settings.POWERSYNC`` over :data:`DEFAULTS`."""
    user = getattr(settings, "POWERSYNC", {}) or {}
    if not isinstance(user, dict):
        raise ImproperlyConfigured("settings.POWERSYNC must be a dict.")
    return _merge(DEFAULTS, user, "POWERSYNC")


def import_setting(path: str, setting_name: str) -> Any:
    """Import a dotted path named in a setting, with an error that names the setting."""
    try:
        return import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"Could not import '{path}' for setting {setting_name}: {exc}") from exc


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting in ("POWERSYNC", "DATABASES"):
        get_config.cache_clear()
        from . import rules

        rules.get_rules.cache_clear()
