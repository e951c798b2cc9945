"""A small chaos run (bench/chaos.py): SIGKILLed worker process groups and a Redis restart lose no flow.

The run is a subprocess with a database (``flowsite_test_chaos``) and a Redis server
(a free port) of its own, so it neither touches the suite's database and Redis nor
depends on the suite's workers: it kills and restarts its own. About 30-60 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAOS_DB = "flowsite_test_chaos"


@pytest.mark.slow
def test_flows_survive_killed_workers_and_a_redis_restart(tmp_path):
    figures = tmp_path / "chaos.json"
    proc = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "chaos.py"),
            "--flows", "60", "--rate", "5", "--kills", "3", "--kill-interval", "2.5",
            "--final-wait", "90", "--db-name", CHAOS_DB, "--json-out", str(figures),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    output = proc.stdout[-6000:] + proc.stderr[-4000:]
    assert figures.exists(), f"the chaos run did not finish (exit {proc.returncode}):\n{output}"
    report = json.loads(figures.read_text())

    assert report["kills"] == 3 and report["redis_restarts"] == 1, output
    assert report["flows_by_status"] == {"completed": 60}, output
    assert report["forbidden"] == [], output
    assert report["unrecovered"] == [], output
    # Every run lost in a kill was recorded once as a failed attempt, and none ran twice at once.
    assert report["lost_runs_not_recorded"] == [], output
    assert report["concurrent_runs"] == [] and report["repeated_attempts"] == [], output
    assert proc.returncode == 0, output
