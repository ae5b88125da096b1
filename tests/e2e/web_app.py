"""The demo's web app for the browser tests: its build (like ``make demo-web``) and Debian's Chromium.

:func:`ensure_web_build` runs ``npm ci`` in demo_project/frontend when its node_modules is older than the
lock file, regenerates the client schema with ``manage.py powersync_schema --lang ts`` and runs the Vite
build when the bundle is older than its sources. :func:`launch_chromium` starts ``/usr/bin/chromium``
through Playwright (``apt-get install chromium``; Playwright's own browser downloads are never used).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

from live_server import MANAGE_PY, REPO_ROOT

FRONTEND = REPO_ROOT / "demo_project" / "frontend"
SCHEMA = FRONTEND / "src" / "schema.ts"
BUNDLE = REPO_ROOT / "demo_project" / "todos" / "static" / "todos" / "app" / "app.js"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


class WebAppUnavailable(RuntimeError):
    """The bundle could not be built or Chromium is missing."""


def _run(args: list[str], cwd: Path, timeout: float = 300) -> str:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "demo_project.settings"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise WebAppUnavailable(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def _sources() -> list[Path]:
    return [FRONTEND / "package-lock.json", FRONTEND / "vite.config.js", *(FRONTEND / "src").iterdir()]


def ensure_web_build() -> Path:
    """Build the web app unless the bundle is current; returns the bundle's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise WebAppUnavailable("npm not found on PATH: the web app is built with npm (Node 20 or newer)")
    with open(FRONTEND / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = FRONTEND / "node_modules" / ".package-lock.json"
        if _mtime(installed) < _mtime(FRONTEND / "package-lock.json"):
            _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], FRONTEND)
        schema = _run([sys.executable, str(MANAGE_PY), "powersync_schema", "--lang", "ts"], REPO_ROOT)
        if not SCHEMA.exists() or SCHEMA.read_text() != schema:
            SCHEMA.write_text(schema)
        if _mtime(BUNDLE) < max(_mtime(path) for path in _sources()):
            _run([npm, "run", "build", "--", "--logLevel", "warn"], FRONTEND)
    return BUNDLE


def launch_chromium(playwright):  # -> playwright.sync_api.Browser
    """Debian's Chromium, headless, with no network of its own (no updates, no QUIC, no sync)."""
    if not Path(CHROMIUM).exists():
        raise WebAppUnavailable(f"{CHROMIUM} is missing: apt-get install -y chromium")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
