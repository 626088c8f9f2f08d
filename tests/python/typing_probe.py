"""What a type checker sees of the public API: `test_typing.py` runs `mypy --strict` on this module, where
each `assert_type` must hold (nothing here runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, assert_type

from stigmer_handshake import Handshake, pb


@dataclass
class Report:
    text: str


async def probe(hs: Handshake) -> None:
    assert_type(await hs.claim("agent"), list[pb.AgentExecution])
    assert_type(await hs.claim(), list[pb.AgentExecution])
    assert_type(await hs.claim("workflow", 5, wait=1.0), list[pb.WorkflowExecution])
    assert_type(await hs.get("id", kind="agent"), pb.AgentExecution)
    assert_type(await hs.get("id", kind="workflow"), pb.WorkflowExecution)
    assert_type(await hs.get("id"), pb.AgentExecution | pb.WorkflowExecution)
    assert_type(await hs.wait("id", 5.0, kind="agent"), pb.AgentExecution)
    assert_type(await hs.result("id", Report), Report)
    assert_type(await hs.result("id"), Any)
    execution = await hs.inspect("id")
    assert_type(execution.phase, Literal["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "UNSPECIFIED"])
    assert_type(execution.callback_state, Literal["armed", "due", "delivering", "delivered", "gone", "dead"] | None)
    [claimed] = await hs.claim("agent")
    assert_type(claimed.spec.message, str)
