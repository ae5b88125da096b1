"""A real demo server (daphne + demo_project.asgi) in a subprocess, for the end-to-end tests.

``LiveServer`` migrates the given database, starts ``python -m daphne`` on a free loopback port (the demo
project by default, or ``project="schema_project"``, the second test project in ``tests/``) with
``DATABASE_URL`` and ``POWERSYNC_JWT_SECRET`` set, and waits until the port accepts connections.
The server's stdout and stderr go to a temporary log file (:meth:`LiveServer.log_text`).
:meth:`LiveServer.manage` runs other manage.py commands against the same database and settings.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MANAGE_PY = REPO_ROOT / "manage.py"
DEFAULT_JWT_SECRET = "e2e-test-secret-0123456789abcdef0123456789abcdef"


class LiveServerError(RuntimeError):
    """The server could not be migrated or started, or a manage.py command failed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LiveServer:
    """Runs the demo project under daphne against ``database_url``.

    Usage::

        with LiveServer(database_url, env={"POWERSYNC_LOG_LEVEL": "DEBUG"}) as server:
            token = server.manage("powersync_token", "alice").strip().splitlines()[-1]
            client.connect(server.url, token)

    ``env`` entries override the inherited environment for both the server and :meth:`manage`.
    The server starts on construction unless ``start=False`` (then call :meth:`start`).
    """

    def __init__(
        self,
        database_url: str,
        env: dict[str, str] | None = None,
        *,
        jwt_secret: str = DEFAULT_JWT_SECRET,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 30.0,
        migrate: bool = True,
        start: bool = True,
        project: str = "demo_project",
    ) -> None:
        self.database_url = database_url
        self.project = project
        self.jwt_secret = jwt_secret
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.migrate = migrate
        self.env = {
            **os.environ,
            **(env or {}),
            "DATABASE_URL": database_url,
            "POWERSYNC_JWT_SECRET": jwt_secret,
            "PYTHONUNBUFFERED": "1",  # so the log file is current while the server runs
            "DJANGO_SETTINGS_MODULE": f"{project}.settings",
            # The second test project lives in tests/ (schema_project).
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115  (closed in stop())
            prefix="powersync-e2e-server-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log_file.name)
        if start:
            self.start()

    # -- context manager ----------------------------------------------------------------------------------

    def __enter__(self) -> LiveServer:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "not started" if self.proc is None else f"pid={self.proc.pid} returncode={self.proc.poll()}"
        return f"<LiveServer {self.url if self.port else '-'} {state}>"

    # -- properties ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43817`` (no trailing slash)."""
        if self.port is None:
            raise LiveServerError("server not started")
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- commands -----------------------------------------------------------------------------------------

    def manage(self, *args: str, check: bool = True, timeout: float = 120.0, input: str | None = None) -> str:
        """Run ``python manage.py *args`` with the server's env (same database); returns stdout.

        With ``check`` a non-zero exit raises :class:`LiveServerError` with stdout and stderr.
        """
        proc = subprocess.run(
            [sys.executable, str(MANAGE_PY), *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise LiveServerError(
                f"manage.py {' '.join(args)} exited with {proc.returncode}\n"
                f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
            )
        return proc.stdout

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        if self.migrate:
            self.manage("migrate", "--noinput")
        if self.port is None:
            # Small race (another process could take the port before daphne binds it); a failed
            # bind shows up as an early exit below.
            self.port = free_port(self.host)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                self.host,
                "-p",
                str(self.port),
                f"{self.project}.asgi:application",
            ],
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise LiveServerError(
                    f"daphne exited with code {self.proc.returncode} during startup:\n{self.log_text()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                log = self.log_text()
                self.stop()
                raise LiveServerError(
                    f"daphne did not accept connections on {self.host}:{self.port} "
                    f"within {self.startup_timeout:.0f} s:\n{log}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout``). The log file is kept."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if not self._log_file.closed:
            self._log_file.flush()

    def restart(self) -> None:
        """Stop and start again on the same port (without migrating again)."""
        self.stop()
        migrate, self.migrate = self.migrate, False
        try:
            self.start()
        finally:
            self.migrate = migrate

    def close(self) -> None:
        """Stop the server and delete its log file."""
        self.stop()
        self._log_file.close()
        self.log_path.unlink(missing_ok=True)
