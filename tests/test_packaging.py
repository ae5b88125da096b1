"""The wheel installs the reusable app only: not the demo project, its migrations or the tests."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_only_the_app(tmp_path):
    # Built from a clean copy of the sources: setuptools reuses a checkout's build/ directory.
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "build", "*.egg-info", "__pycache__", "*.sqlite3", "static"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("powersync_django-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"powersync_django", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    assert "powersync_django/py.typed" in names
    assert "powersync_django/migrations/0001_initial.py" in names
    assert "powersync_django/templates/admin/powersync_django/status.html" in names  # the admin status page
    assert any(n.startswith("powersync_django/management/commands/powersync_replicate") for n in names)
