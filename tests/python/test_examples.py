"""The examples are real programs: run each one as a user would (the demo: test_cli)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.timeout(200)
def test_agent_path_example() -> None:
    out = run("agent_path.py")
    assert "parent workflow got: Report(summary='all about tides', confidence=0.92)" in out
    assert "phase COMPLETED, callback delivered" in out


@pytest.mark.timeout(200)
def test_workflow_path_example() -> None:
    out = run("workflow_path.py")
    assert "parent workflow got: Receipt(order_size=2, status='shipped')" in out
    assert "phase COMPLETED" in out


@pytest.mark.timeout(200)
def test_webhook_approval_example() -> None:
    out = run("webhook_approval.py")
    assert "first click: delivered, second click: already_settled" in out
    assert "parent workflow got: Approval(approved=True, by='dana')" in out
