"""Typed as users use it: `mypy --strict` passes on the examples (with the user-style test module) and on
`typing_probe.py`, whose `assert_type`s pin what `claim`, `get`, `wait`, `result` and `inspect` return."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stigmer_handshake import ExecutionNotFound, Handshake, pb

from conftest import TRANSCRIPT

ROOT = Path(__file__).resolve().parents[2]


def test_the_examples_and_the_probe_pass_mypy_strict() -> None:
    modules = [*sorted((ROOT / "examples").glob("*.py")), Path(__file__).with_name("typing_probe.py")]
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *map(str, modules)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    TRANSCRIPT.extend([done.stdout, done.stderr])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"no issues found in {len(modules)} source files" in done.stdout


async def test_get_and_wait_of_one_kind_do_not_find_the_other(handshake: Handshake) -> None:
    created = await handshake.create(pb.AgentExecutionSpec(agent_id="a", message="m"))
    assert (await handshake.get(created, kind="agent")).spec.message == "m"
    with pytest.raises(ExecutionNotFound, match=r"no workflow execution with id .* \(its kind is agent\)"):
        await handshake.get(created, kind="workflow")
    with pytest.raises(ExecutionNotFound, match="its kind is agent"):
        await handshake.wait(created, 1, kind="workflow")
