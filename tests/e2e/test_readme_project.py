"""The README's "Use it in your project" steps, literally, in a fresh ``django-admin startproject``, served by
runserver and by uvicorn.

Every code block of that section preceded by a ``<!-- readme-test: ... -->`` marker is applied as written:
``run`` blocks are executed line by line (``pip install`` is skipped: the checkout under test is installed
already; ``runserver`` and ``uvicorn`` get free ports, ``runserver`` ``--noreload``), ``write FILE`` replaces a file, ``append FILE``
appends to it. Then a row is synced to the official client through the server the README starts.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_server import REPO_ROOT, free_port
from node_client import NodeClient

pytestmark = pytest.mark.e2e

MARKER = re.compile(r"<!-- readme-test: (run|write|append)\s*([^ ]*?) -->\n```[a-z]*\n(.*?)```", re.S)
CLIENT_SCHEMA = {"notes": {"owner_id": "integer", "text": "text", "done": "integer", "updated_at": "text"}}


def readme_steps() -> list[tuple[str, str, str]]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## Use it in your project"):text.index("## Bucket definitions")]
    steps = MARKER.findall(section)
    assert [kind for kind, _, _ in steps].count("run") >= 2, "the README lost its readme-test markers"
    return steps


class Project:
    """Applies README steps in a temporary directory, the way a developer would type them."""

    def __init__(self, root: Path) -> None:
        self.cwd = root
        bindir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH",
                                                                     "DATABASE_URL")}
        self.env["PATH"] = bindir + os.pathsep + self.env.get("PATH", "")
        self.servers: dict[str, tuple[subprocess.Popen, int]] = {}  # "runserver"/"uvicorn" -> (process, port)
        self.log = root / "server.log"

    def run_line(self, line: str) -> None:
        line = line.split("#", 1)[0].strip()
        if not line:
            return
        argv = shlex.split(line)
        if argv[:2] == ["pip", "install"]:
            return
        if argv[0] == "cd":
            self.cwd = self.cwd / argv[1]
            return
        if argv[0] == "python":
            argv[0] = sys.executable
        if argv[-1] == "runserver":
            port = free_port()
            self.start_server("runserver", [*argv, f"127.0.0.1:{port}", "--noreload"], port)
            return
        if argv[0] == "uvicorn":
            port = free_port()
            argv[argv.index("--port") + 1] = str(port)
            self.start_server("uvicorn", [str(Path(sys.executable).parent / "uvicorn"), *argv[1:]], port)
            return
        proc = subprocess.run(argv, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{line!r} failed:\n{proc.stdout}\n{proc.stderr}"

    def start_server(self, name: str, argv: list[str], port: int) -> None:
        server = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=self.log.open("ab"),
                                  stderr=subprocess.STDOUT)
        self.servers[name] = (server, port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert server.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"{name} did not start:\n" + self.log.read_text())

    def manage(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "manage.py", *args], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def apply(self, kind: str, target: str, body: str) -> None:
        if kind == "run":
            for line in body.splitlines():
                self.run_line(line)
        elif kind == "write":
            (self.cwd / target).write_text(body)
        else:
            with (self.cwd / target).open("a") as f:
                f.write("\n" + body)

    def stop(self) -> None:
        for server, _ in self.servers.values():
            if server.poll() is None:
                server.terminate()
                server.wait(15)


def test_readme_steps_work_in_a_fresh_startproject(tmp_path, node_modules):
    project = Project(tmp_path)
    try:
        for kind, target, body in readme_steps():
            project.apply(kind, target, body)
        assert set(project.servers) == {"runserver", "uvicorn"}, "the README starts runserver and uvicorn"
        user_pk = project.manage("shell", "-c", "from django.contrib.auth.models import User; "
                                 "from notes.models import Note; u = User.objects.create_user('ann'); "
                                 "Note.objects.create(owner=u, text='first'); print(u.pk)").strip().splitlines()[-1]
        # (Django 5.2's shell prints how many objects it imported first.)
        token = project.manage("powersync_token", user_pk).strip().splitlines()[-1]
        expected = [{"text": "first"}]
        for i, (name, (_, port)) in enumerate(sorted(project.servers.items())):
            client = NodeClient(name=f"readme-{name}")
            try:
                client.open(str(tmp_path / f"client-{name}.db"), schema=CLIENT_SCHEMA)
                client.connect(f"http://127.0.0.1:{port}/powersync", token)
                client.wait_for_first_sync()
                assert client.query("SELECT text FROM notes ORDER BY text") == expected, name
                # A change committed by another process reaches the open connection.
                text = f"note {i}"
                project.manage("shell", "-c", "from notes.models import Note; "
                               f"Note.objects.create(owner_id={user_pk}, text={text!r})")
                expected = sorted([*expected, {"text": text}], key=lambda r: r["text"])
                result = client.wait_for("SELECT text FROM notes ORDER BY text", expected)
                assert result["matched"], (name, result)
            finally:
                client.close()
        assert "Traceback" not in project.log.read_text(), project.log.read_text()
    finally:
        project.stop()
