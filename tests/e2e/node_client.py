"""Python driver for ``client.mjs``: one official ``@powersync/node`` client per Node process.

``NodeClient`` spawns ``node client.mjs`` (cwd ``tests/e2e``), sends it JSON commands on stdin and
waits for the matching JSON reply on stdout. A reader thread routes replies to the waiting callers
by id (so a concurrent command such as :meth:`NodeClient.sample_async` can run while others are
sent); another thread drains stderr (SDK log echo, crashes) into a bounded buffer, available through
:meth:`NodeClient.stderr_text` for debugging.

``ensure_node_modules()`` installs the pinned Node dependencies with ``npm ci`` when needed.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

E2E_DIR = Path(__file__).resolve().parent
CLIENT_SCRIPT = E2E_DIR / "client.mjs"
NODE_MODULES = E2E_DIR / "node_modules"
PACKAGE_LOCK = E2E_DIR / "package-lock.json"
# npm's "hidden lockfile", rewritten by every `npm ci`/`npm install`.
HIDDEN_LOCK = NODE_MODULES / ".package-lock.json"
INSTALL_LOCK = E2E_DIR / ".npm-ci.lock"

# Loads the native better-sqlite3 module (built for one Node ABI) and the PowerSync core extension
# shipped inside @powersync/node, i.e. what the client needs beyond plain JavaScript.
_PROBE_SCRIPT = """
import Database from 'better-sqlite3';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import * as fs from 'node:fs';
const lib = path.dirname(createRequire(import.meta.url).resolve('@powersync/node/package.json')) + '/lib';
const names = {'linux-x64': 'libpowersync_x64.linux.so', 'linux-arm64': 'libpowersync_aarch64.linux.so',
               'darwin-x64': 'libpowersync_x64.macos.dylib', 'darwin-arm64': 'libpowersync_aarch64.macos.dylib'};
const db = new Database(':memory:');
const name = names[process.platform + '-' + process.arch];
if (name) {
  db.loadExtension(path.join(lib, name), 'sqlite3_powersync_init');
  console.log(db.prepare('SELECT powersync_rs_version() AS v').get().v);
} else {
  console.log('better-sqlite3 ok; core extension not probed on ' + process.platform + '-' + process.arch);
}
"""

# Seconds added to a command's own timeout (e.g. waitFor's timeoutMs) before giving up on the reply.
REPLY_SLACK = 15.0
NPM_CI_TIMEOUT = 900.0

_node_modules_ready = False
_node_modules_guard = threading.Lock()


class NodeClientError(RuntimeError):
    """The Node client answered a command with ``ok: false`` (or could not answer at all)."""


class NodeClientTimeout(NodeClientError, TimeoutError):
    """No reply to a command arrived in time."""


class NodeProcessDied(NodeClientError):
    """The Node process exited while a reply was expected."""


class NodeNotAvailable(RuntimeError):
    """``node`` or ``npm`` is missing, or the dependencies cannot be installed."""


# ---------------------------------------------------------------------------------------------------------
# Dependencies


def _probe(node: str) -> str | None:
    """None if the installed modules load under this Node, else the reason why not."""
    try:
        proc = subprocess.run(
            [node, "--input-type=module", "-e", _PROBE_SCRIPT],
            cwd=E2E_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return "probe timed out"
    if proc.returncode != 0:
        return proc.stderr.strip() or f"probe exited with {proc.returncode}"
    return None


def _install_is_current(node: str) -> bool:
    try:
        if HIDDEN_LOCK.stat().st_mtime < PACKAGE_LOCK.stat().st_mtime:
            return False  # package-lock.json changed since the last install
    except FileNotFoundError:
        return False  # never installed
    return _probe(node) is None


def ensure_node_modules(*, force: bool = False) -> Path:
    """Run ``npm ci`` in tests/e2e unless node_modules is current, and check that it works.

    node_modules counts as current when npm's hidden lockfile (node_modules/.package-lock.json) is not
    older than package-lock.json and better-sqlite3 plus the PowerSync core extension load under the
    current Node (a Node upgrade needs a rebuild of the native module). Safe to call from parallel
    processes (an exclusive file lock serializes check and install) and cheap to call repeatedly (the
    result is cached per process). Returns the node_modules path. Raises :class:`NodeNotAvailable` if
    node/npm is missing or ``npm ci`` fails (with its output).
    """
    global _node_modules_ready
    with _node_modules_guard:
        if _node_modules_ready and not force:
            return NODE_MODULES
        node = shutil.which("node")
        npm = shutil.which("npm")
        if node is None or npm is None:
            missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if path is None)
            raise NodeNotAvailable(
                f"{missing} not found on PATH: the e2e tests need Node.js (20 or newer) and npm to run "
                "the official @powersync/node client"
            )
        with open(INSTALL_LOCK, "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file is closed
            if force or not _install_is_current(node):
                _run_npm_ci(npm)
                problem = _probe(node)
                if problem is not None:
                    raise NodeNotAvailable(f"`npm ci` succeeded but the modules do not load: {problem}")
        _node_modules_ready = True
        return NODE_MODULES


def _run_npm_ci(npm: str) -> None:
    # better-sqlite3 has no reachable prebuilt binary here, so its install script compiles it from
    # source: expect about a minute.
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=E2E_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        raise NodeNotAvailable(f"`npm ci` in {E2E_DIR} timed out after {NPM_CI_TIMEOUT:.0f} s") from exc
    if proc.returncode != 0:
        raise NodeNotAvailable(
            f"`npm ci` in {E2E_DIR} failed with exit code {proc.returncode} after "
            f"{time.monotonic() - started:.0f} s\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )


# ---------------------------------------------------------------------------------------------------------
# The client


class _Pending:
    """A reply slot for one command id."""

    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: dict[str, Any] | None = None


class PendingReply:
    """A command sent without waiting for its reply (see :meth:`NodeClient.call_async`)."""

    def __init__(self, client: NodeClient, command_id: int, cmd: str, timeout: float) -> None:
        self._client = client
        self.id = command_id
        self.cmd = cmd
        self.timeout = timeout

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the reply and return its result (raises like :meth:`NodeClient.call`)."""
        return self._client._wait(self.id, self.cmd, self.timeout if timeout is None else timeout)


class NodeClient:
    """Drives one ``@powersync/node`` PowerSyncDatabase in a ``node client.mjs`` child process.

    Use as a context manager (or call :meth:`close`) so that the process is always stopped::

        with NodeClient() as client:
            client.open(tmp_path / "client.db")
            client.connect(server.url, token)
            client.wait_for_first_sync()
            rows = client.query("SELECT * FROM todos")

    Every method sends one command and blocks until its reply. Failed commands raise
    :class:`NodeClientError`; missing replies raise :class:`NodeClientTimeout`.
    """

    def __init__(
        self,
        *,
        name: str = "client",
        default_timeout: float = 30.0,
        env: dict[str, str] | None = None,
        install: bool = True,
        stderr_lines: int = 50_000,
    ) -> None:
        if install:
            ensure_node_modules()
        node = shutil.which("node")
        if node is None:
            raise NodeNotAvailable("node not found on PATH")
        self.name = name
        self.default_timeout = default_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()  # guards _pending and stdin writes
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._stray_stdout: list[str] = []
        self._closed = False
        self.proc = subprocess.Popen(
            [node, str(CLIENT_SCRIPT)],
            cwd=E2E_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
            env={**os.environ, **(env or {})},
        )
        self._stdout_thread = threading.Thread(
            target=self._read_stdout, name=f"node-client-{name}-stdout", daemon=True
        )
        self._stderr_thread = threading.Thread(
            target=self._read_stderr, name=f"node-client-{name}-stderr", daemon=True
        )
        self._stdout_thread.start()
        self._stderr_thread.start()

    # -- context manager ----------------------------------------------------------------------------------

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NodeClient {self.name} pid={self.proc.pid} returncode={self.proc.poll()}>"

    # -- plumbing -----------------------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
                command_id = message["id"]
            except (ValueError, KeyError, TypeError):
                self._stray_stdout.append(line)  # client.mjs never prints anything but replies
                continue
            with self._lock:
                pending = self._pending.get(command_id)
            if pending is None:
                self._stray_stdout.append(line)  # a reply nobody waits for any more (timed out)
                continue
            pending.reply = message
            pending.event.set()
        # EOF: the process is gone; wake every waiter (they see reply None and report the death).
        with self._lock:
            waiting = list(self._pending.values())
        for pending in waiting:
            pending.event.set()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip("\n"))

    def stderr_text(self, last: int | None = None) -> str:
        """The Node process' stderr so far (the SDK's log echo, crashes), optionally only the last lines."""
        lines = list(self._stderr)
        if last is not None:
            lines = lines[-last:]
        return "\n".join(lines)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _describe_death(self) -> str:
        self._stderr_thread.join(timeout=2)
        return (
            f"node client {self.name!r} exited with code {self.proc.poll()}; stderr tail:\n"
            f"{self.stderr_text(last=60)}"
        )

    def call_async(
        self,
        cmd: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        concurrent: bool = True,
    ) -> PendingReply:
        """Send a command and return without waiting; ``.result()`` on the returned object waits.

        With ``concurrent`` (the default here) the command runs right away in the Node process instead of
        queueing behind the commands sent before it, so e.g. a :meth:`sample_async` overlaps the
        commands that follow it.
        """
        if self._closed:
            raise NodeClientError(f"node client {self.name!r} is closed")
        command_id = next(self._ids)
        message: dict[str, Any] = {"id": command_id, "cmd": cmd, "args": args or {}}
        if concurrent:
            message["concurrent"] = True
        line = json.dumps(message) + "\n"
        with self._lock:
            self._pending[command_id] = _Pending()
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
                write_error = None
            except (BrokenPipeError, OSError, ValueError) as exc:
                del self._pending[command_id]
                write_error = exc
        if write_error is not None:
            raise NodeProcessDied(f"while sending {cmd!r}: {self._describe_death()}") from write_error
        return PendingReply(self, command_id, cmd, self.default_timeout if timeout is None else timeout)

    def _wait(self, command_id: int, cmd: str, timeout: float) -> Any:
        with self._lock:
            pending = self._pending.get(command_id)
        if pending is None:
            raise NodeClientError(f"reply to command {command_id} ({cmd}) was already consumed")
        try:
            if not pending.event.wait(timeout):
                raise NodeClientTimeout(
                    f"no reply to {cmd!r} (id {command_id}) from node client {self.name!r} within {timeout:.1f} s; "
                    f"stderr tail:\n{self.stderr_text(last=40)}"
                )
        finally:
            with self._lock:
                self._pending.pop(command_id, None)
        reply = pending.reply
        if reply is None:
            raise NodeProcessDied(f"while waiting for {cmd!r}: {self._describe_death()}")
        if not reply.get("ok"):
            raise NodeClientError(f"{cmd} failed: {reply.get('error')}")
        return reply.get("result")

    def call(
        self,
        cmd: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        concurrent: bool = False,
    ) -> Any:
        """Send one command and return its result (raises :class:`NodeClientError` on ``ok: false``)."""
        return self.call_async(cmd, args, timeout=timeout, concurrent=concurrent).result()

    @staticmethod
    def _ms_timeout(timeout_ms: float) -> float:
        return timeout_ms / 1000.0 + REPLY_SLACK

    # -- commands -----------------------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return self.call("ping")

    def open(
        self,
        db_path: str | os.PathLike[str],
        *,
        log_level: str = "debug",
        read_worker_count: int | None = None,
        schema: dict[str, dict[str, str]] | None = None,
        schema_module: str | os.PathLike[str] | None = None,
    ) -> dict[str, Any]:
        """Open (creating if needed) the client database at ``db_path``.

        ``schema``: ``{table: {column: "text" | "integer" | "real"}}`` (default: the demo's lists and todos);
        ``schema_module``: instead, a JavaScript module exporting ``AppSchema`` (a compiled generated schema).

        ``log_level`` is the minimum level captured by :meth:`logs` (trace, debug, info, warn, error);
        ``trace`` also records every sync line the core extension processes (verbose).
        Returns ``{"dbPath", "sdkVersion", "clientId"}``.
        """
        args: dict[str, Any] = {"dbPath": os.fspath(db_path), "logLevel": log_level}
        if read_worker_count is not None:
            args["readWorkerCount"] = read_worker_count
        if schema is not None:
            args["schema"] = schema
        if schema_module is not None:
            args["schemaModule"] = os.fspath(schema_module)
        return self.call("open", args, timeout=60)

    def connect(
        self,
        endpoint: str,
        token: str | None,
        *,
        connection_method: str = "http",
        params: dict[str, Any] | None = None,
        app_metadata: dict[str, str] | None = None,
        retry_delay_ms: int = 300,
        crud_upload_throttle_ms: int = 50,
        upload_path: str = "/api/upload",
        timeout_ms: int = 10_000,
        extra_options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Connect the sync client (``connection_method`` is ``"http"`` or ``"websocket"``).

        Returns once the first connection attempt succeeded or failed (the SDK keeps retrying every
        ``retry_delay_ms`` after failures), or after ``timeout_ms``: ``{"settled": bool, "status": {...}}``.
        Uploads go to ``endpoint + upload_path``. ``extra_options`` are further SDK SyncOptions passed
        as is (e.g. ``{"checkpointMode": "legacy"}``, ``{"fetchStrategy": "sequential"}``).
        """
        args: dict[str, Any] = {
            "endpoint": endpoint,
            "token": token,
            "connectionMethod": connection_method,
            "params": params or {},
            "retryDelayMs": retry_delay_ms,
            "crudUploadThrottleMs": crud_upload_throttle_ms,
            "uploadPath": upload_path,
            "timeoutMs": timeout_ms,
        }
        if app_metadata is not None:
            args["appMetadata"] = app_metadata
        if extra_options:
            args["extraOptions"] = extra_options
        return self.call("connect", args, timeout=self._ms_timeout(timeout_ms))

    def set_token(self, token: str | None) -> None:
        """Token returned by the next fetchCredentials (the SDK caches credentials until invalidated)."""
        self.call("setToken", {"token": token})

    def credentials(self, *, clear: bool = False) -> dict[str, Any]:
        """``{"endpoint", "token", "fetchCount", "invalidations"}`` of the connector."""
        return self.call("credentials", {"clear": clear})

    def invalidations(self, *, clear: bool = False) -> list[dict[str, Any]]:
        """One ``{"time"}`` entry per call of the connector's ``invalidateCredentials()`` by the SDK."""
        return self.call("invalidations", {"clear": clear})

    def wait_for_first_sync(
        self, timeout_ms: int = 30_000, *, priority: int | None = None, check: bool = True
    ) -> dict[str, Any]:
        """Wait for the first complete sync: ``{"synced", "elapsedMs", "status"}``.

        With ``check`` (default) a timeout raises :class:`NodeClientError` including the status and
        the last SDK log lines.
        """
        args: dict[str, Any] = {"timeoutMs": timeout_ms}
        if priority is not None:
            args["priority"] = priority
        result = self.call("waitForFirstSync", args, timeout=self._ms_timeout(timeout_ms))
        if check and not result["synced"]:
            raise NodeClientError(
                f"first sync did not complete within {timeout_ms} ms; status: {result['status']}\n"
                f"last logs:\n{self.logs_text(last=40)}"
            )
        return result

    # --- Sync Streams -----------------------------------------------------------------------------

    def subscribe_stream(self, name: str, params: dict[str, Any] | None = None, *, ttl: float | None = None,
                         priority: int | None = None) -> int:
        """``db.syncStream(name, params).subscribe({ttl, priority})``; returns a handle for the calls below."""
        args: dict[str, Any] = {"name": name, "params": params}
        if ttl is not None:
            args["ttl"] = ttl
        if priority is not None:
            args["priority"] = priority
        return self.call("subscribeStream", args)["handle"]

    def unsubscribe_stream(self, handle: int) -> None:
        """``subscription.unsubscribe()``: the stream is evicted once its TTL has passed."""
        self.call("unsubscribeStream", {"handle": handle})

    def wait_for_stream_first_sync(self, handle: int, timeout_ms: int = 30_000) -> dict[str, Any]:
        """``subscription.waitForFirstSync()`` bounded by ``timeout_ms``: ``{"synced", "elapsedMs"}``."""
        return self.call("waitForStreamFirstSync", {"handle": handle, "timeoutMs": timeout_ms},
                         timeout=self._ms_timeout(timeout_ms))

    def stream_status(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """``currentStatus.forStream({name, parameters})``: name, parameters, active, isDefault,
        hasExplicitSubscription, hasSynced, expiresAt, lastSyncedAt, priority, progress (None if untracked)."""
        return self.call("streamStatus", {"name": name, "params": params})

    def sync_streams(self) -> list[dict[str, Any]]:
        """``currentStatus.syncStreams``, serialized like :meth:`stream_status`."""
        return self.call("syncStreams")

    def status(self) -> dict[str, Any]:
        """Current sync status: connected, connecting, hasSynced, lastSyncedAt, downloading, uploading,
        downloadError, uploadError, downloadProgress, priorityStatusEntries, message."""
        return self.call("status")

    def status_history(self, *, clear: bool = False) -> list[dict[str, Any]]:
        """Every status the SDK reported since ``open`` (each like :meth:`status`, plus ``time``)."""
        return self.call("statusHistory", {"clear": clear})

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        return self.call("query", {"sql": sql, "params": params or []})

    def execute(self, sql: str, params: list[Any] | None = None) -> dict[str, Any]:
        """Run a write statement: ``{"rowsAffected", "insertId"}`` (rowsAffected is 0 for writes to
        PowerSync's views)."""
        return self.call("execute", {"sql": sql, "params": params or []})

    def write_transaction(self, statements: list[tuple[str, list[Any]] | str]) -> list[dict[str, Any]]:
        """Run several statements in one write transaction (one CRUD transaction / upload batch)."""
        normalized = [
            {"sql": s, "params": []} if isinstance(s, str) else {"sql": s[0], "params": list(s[1])}
            for s in statements
        ]
        return self.call("writeTransaction", {"statements": normalized})

    def wait_for(
        self,
        sql: str,
        expected: Any,
        params: list[Any] | None = None,
        *,
        timeout_ms: int = 10_000,
        interval_ms: int = 50,
    ) -> dict[str, Any]:
        """Poll ``sql`` until its rows equal ``expected`` (deep equality, JSON values).

        Returns ``{"matched": bool, "rows": <last rows>, "elapsedMs"}`` either way.
        """
        args = {
            "sql": sql,
            "params": params or [],
            "expected": expected,
            "timeoutMs": timeout_ms,
            "intervalMs": interval_ms,
        }
        return self.call("waitFor", args, timeout=self._ms_timeout(timeout_ms))

    def _sample_args(
        self,
        sql: str,
        params: list[Any] | None,
        duration_ms: int,
        interval_ms: int,
        on_change: bool,
        dedupe: bool,
        tables: list[str] | None,
    ) -> dict[str, Any]:
        args: dict[str, Any] = {
            "sql": sql,
            "params": params or [],
            "durationMs": duration_ms,
            "intervalMs": interval_ms,
            "onChange": on_change,
            "dedupe": dedupe,
        }
        if tables is not None:
            args["tables"] = tables
        return args

    def sample(
        self,
        sql: str,
        params: list[Any] | None = None,
        *,
        duration_ms: int = 1000,
        interval_ms: int = 20,
        on_change: bool = True,
        dedupe: bool = False,
        tables: list[str] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Snapshots of ``sql``'s rows every ``interval_ms`` for ``duration_ms`` (to detect flicker).

        With ``on_change`` a snapshot is also taken after every change notification for the query's
        tables; with ``dedupe`` consecutive equal snapshots are collapsed.
        """
        args = self._sample_args(sql, params, duration_ms, interval_ms, on_change, dedupe, tables)
        return self.call("sample", args, timeout=self._ms_timeout(duration_ms))

    def sample_async(
        self,
        sql: str,
        params: list[Any] | None = None,
        *,
        duration_ms: int = 1000,
        interval_ms: int = 20,
        on_change: bool = True,
        dedupe: bool = False,
        tables: list[str] | None = None,
    ) -> PendingReply:
        """Like :meth:`sample` but returns at once; ``.result()`` gives the snapshots. Other commands can
        be sent meanwhile (they run concurrently with the sampling)."""
        args = self._sample_args(sql, params, duration_ms, interval_ms, on_change, dedupe, tables)
        return self.call_async("sample", args, timeout=self._ms_timeout(duration_ms), concurrent=True)

    def upload_rejections(self, *, clear: bool = False) -> list[dict[str, Any]]:
        """4xx answers of the upload endpoint: ``{"time", "status", "body", "transactionId", "batch"}``."""
        return self.call("uploadRejections", {"clear": clear})

    def uploads(self, *, clear: bool = False) -> list[dict[str, Any]]:
        """Every upload attempt: ``{"time", "transactionId", "ops", "status", "outcome"}`` where outcome is
        ok, rejected (4xx), server-error (5xx, retried) or network-error (retried)."""
        return self.call("uploads", {"clear": clear})

    def crud_count(self) -> int:
        """Number of local changes still waiting in the upload queue (ps_crud)."""
        return self.call("crudCount")

    def logs(
        self, *, clear: bool = False, min_level: str | None = None, contains: str | None = None
    ) -> list[dict[str, Any]]:
        """Captured SDK log records ``{"time", "level", "levelName", "source", "message", "error"}``.

        ``min_level`` filters by level name, ``contains`` by a case-insensitive substring of message
        or error; ``clear`` empties the buffer after reading.
        """
        args: dict[str, Any] = {"clear": clear}
        if min_level is not None:
            args["minLevel"] = min_level
        if contains is not None:
            args["contains"] = contains
        return self.call("logs", args)["entries"]

    def logs_text(self, *, last: int | None = None, min_level: str | None = None) -> str:
        """The captured log records as text lines (for assertion messages)."""
        entries = self.logs(min_level=min_level)
        if last is not None:
            entries = entries[-last:]
        return "\n".join(
            f"{e['time']} {e['levelName'].upper()} {e['message']}"
            + (f" -- {e['error']}" if e["error"] else "")
            for e in entries
        )

    def checksum_failures(self) -> list[dict[str, Any]]:
        """Log records of the core extension's checksum mismatch warning ("Checksums didn't match, ...")."""
        return self.logs(contains="checksums didn't match")

    def request_checkpoint(self, timeout_ms: int = 15_000) -> dict[str, Any]:
        """``db.requestCheckpoint()`` and its ``waitForSync()`` (connect with ``{"checkpointMode": "requests"}``):
        returns ``{"requestId", "hasSynced"}`` once every server change committed before it is applied locally."""
        return self.call("requestCheckpoint", {"timeoutMs": timeout_ms}, timeout=self._ms_timeout(timeout_ms))

    def disconnect(self) -> dict[str, Any]:
        return self.call("disconnect")

    def disconnect_and_clear(self, *, clear_local: bool = True) -> None:
        self.call("disconnectAndClear", {"clearLocal": clear_local})

    def close_database(self) -> None:
        """Close the database (disconnecting first) but keep the Node process for another ``open``."""
        self.call("close")

    # -- lifecycle ----------------------------------------------------------------------------------------

    def close(self, timeout: float = 15.0) -> None:
        """Close the database and stop the Node process (kill it if it does not exit in time)."""
        if self._closed:
            return
        try:
            if self.alive:
                with contextlib.suppress(NodeClientError):
                    self.call("exit", timeout=timeout)
        finally:
            self._closed = True
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self._stdout_thread.join(timeout=5)
            self._stderr_thread.join(timeout=5)

    def kill(self) -> None:
        """Kill the Node process at once (simulates a crashed app)."""
        self._closed = True
        self.proc.kill()
        self.proc.wait(timeout=10)
