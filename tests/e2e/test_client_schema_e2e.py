"""The generated TypeScript schema type-checks and runs in the official client, unchanged."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from node_client import NodeClient

pytestmark = pytest.mark.e2e
E2E = Path(__file__).parent


def test_generated_typescript_loads_and_syncs(server, node_modules, user, tmp_path):
    ts = tmp_path / "schema.ts"
    server.manage("powersync_schema", "--lang", "ts", "--package", "@powersync/node", "--out", str(ts))
    (tmp_path / "node_modules").symlink_to(node_modules)
    (tmp_path / "package.json").write_text(json.dumps({"type": "module"}))
    tsc = [str(node_modules / ".bin" / "tsc"), "--strict", "--module", "esnext", "--moduleResolution", "bundler",
           "--target", "es2022", "--skipLibCheck", "--outDir", str(tmp_path / "out"), str(ts)]
    proc = subprocess.run(tsc, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # type-checks against the SDK's declarations
    (tmp_path / "out" / "package.json").write_text(json.dumps({"type": "module"}))
    list_id = server.orm(f"result = str(TodoList.objects.create(name='typed', owner_id={user!r}).pk)")
    server.orm(f"Todo.objects.create(list_id={list_id!r}, description='from the generated schema', completed=True)")
    client = NodeClient(name="generated")
    try:
        client.open(str(tmp_path / "client.db"), schema_module=tmp_path / "out" / "schema.js")
        client.connect(server.url, server.token(user))
        client.wait_for_first_sync()
        rows = client.query("SELECT list_id, description, completed FROM todos")
        assert rows == [{"list_id": list_id, "description": "from the generated schema", "completed": 1}]
        assert client.query("SELECT name FROM lists") == [{"name": "typed"}]
    finally:
        client.close()
