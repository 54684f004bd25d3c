"""The harness tests itself: a deliberately broken node configuration must fail the right gate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.stack import paths


def test_broken_node_config_fails_gate_a2_and_stops_the_run(tmp_path: Path) -> None:
    run_id = f"selftest-broken-{os.getpid()}"
    env = {**os.environ, "HARNESS_RUN_ID": run_id,
           # Every app-server call times out at once: registration still works, every turn fails.
           "HARNESS_NODE_OVERRIDES": json.dumps({"rpc_timeout": 0.001}),
           "HARNESS_HISTORY": str(tmp_path / "history.jsonl")}  # keep the real trend clean
    out = subprocess.run([sys.executable, "-m", "harness.cli", "gate", "A", "--profile", "ci"], cwd=paths.REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((paths.REPORTS_DIR / run_id / "gates.json").read_text())
    verdicts = {g["stage"]: g for g in summary["gates"]}
    assert list(verdicts) == ["A1", "A2"], "A3 must not run after A2 failed"
    assert verdicts["A1"]["passed"] is True, "the manager alone is not broken"
    assert verdicts["A2"]["passed"] is False
    failed = [c["name"] for c in verdicts["A2"]["criteria"] if not c["passed"]]
    assert any(name.startswith("A2-08") for name in failed), failed  # a turn needs the app-server
    assert "A2 FAIL" in " ".join(out.stdout.split())
