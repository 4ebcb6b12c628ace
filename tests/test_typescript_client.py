"""The TypeScript client (clients/typescript/): its Node example streams a chat from a
live `tandem serve` over gRPC, under `node --test` (clients/typescript/test/)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from tests.node_tools import TS_DIR, node_tool
from tests.servers import TandemProcess

ADMIN_KEY = "ts-admin-key-0123456789abcdef"
CONFIG = f"""
providers: [{{name: demo, kind: mock}}]
models: [{{name: echo, provider: demo}}]
tiers:
  free: {{default_model: echo, models: [echo]}}
auth: {{required: true, admin_keys: ["{ADMIN_KEY}"]}}
"""


def test_node_example_streams_a_chat_from_a_live_server(
    tandem: Callable[..., TandemProcess],
) -> None:
    node_tool("protoc-gen-es")  # node_modules is installed
    server = tandem(CONFIG)
    env = {**os.environ, "TANDEM_TARGET": server.grpc, "TANDEM_API_KEY": ADMIN_KEY}
    done = subprocess.run(
        ["node", "--test", "test/stream-chat.test.mjs"],
        cwd=TS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\n# pass 4\n" in done.stdout, done.stdout  # node ran them all
