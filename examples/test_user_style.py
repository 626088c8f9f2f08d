"""How a user of stigmer-handshake tests their own code: only the fixtures `pip install
"stigmer-handshake[testing]"` registers (`handshake`, `temporal_client`), typed throughout (this module
passes `mypy --strict` with no `isinstance` or `cast`). `make test` runs it.

Here "their code" is a caller activity that defers to an agent run, and a runner step that answers it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from stigmer_handshake import Handshake, pb
from stigmer_handshake.testing import activity_info


@dataclass
class Summary:
    text: str
    words: int


async def summarise(hs: Handshake, ticket: str) -> None:
    """The caller activity under test: defer to an agent run named after the ticket."""
    await hs.defer(pb.AgentExecutionSpec(agent_id="summariser", message=ticket), execution_id=f"summary-{ticket}")


async def runner_step(hs: Handshake) -> str:
    """The runner under test: claim one agent run, answer it, return its id."""
    [execution] = await hs.claim("agent", wait=5)
    message = execution.spec.message  # typed: claim("agent") gives pb.AgentExecution
    await hs.succeed(execution.metadata.id, Summary(text=message.upper(), words=len(message.split())))
    return execution.metadata.id


async def test_the_caller_defers_and_frees_its_slot(handshake: Handshake, temporal_client: Client) -> None:
    env = ActivityEnvironment()
    env.info = await activity_info(temporal_client)
    with pytest.raises(BaseException) as pending:
        await env.run(summarise, handshake, "OPS-7")
    assert type(pending.value).__name__ == "_CompleteAsyncError"  # what a worker turns into "result pending"
    execution = await handshake.inspect("summary-OPS-7")
    assert (execution.phase, execution.callback_state) == ("PENDING", "armed")


async def test_the_runner_answers_with_a_typed_result(handshake: Handshake) -> None:
    created = await handshake.create(pb.AgentExecutionSpec(agent_id="summariser", message="disk full on db-2"))
    assert await runner_step(handshake) == created
    done = await handshake.wait(created, timeout=5, kind="agent")
    assert done.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_COMPLETED
    summary = await handshake.result(created, Summary)  # typed: Summary
    assert (summary.text, summary.words) == ("DISK FULL ON DB-2", 4)
