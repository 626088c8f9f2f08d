"""Across a whole end-to-end run, no log line, exception text, repr or str carries a task token."""

from __future__ import annotations

import base64
import logging
import uuid

import pytest
from temporalio.client import WorkflowFailureError

from stigmer_handshake import Callback, HandshakeError, TaskToken

from conftest import Env
from flows import AgentParent, AgentRequest, PipelineParent, PipelineRequest


def token_forms(token: bytes) -> list[str]:
    """The token as it could show up in text: escaped bytes, hex, base64, and 16-character runs of them."""
    whole = [
        repr(token)[2:-1],
        token.hex(),
        token.hex().upper(),
        base64.b64encode(token).decode(),
        base64.urlsafe_b64encode(token).decode(),
    ]
    runs = [form[i : i + 16] for form in whole[1:] for i in range(0, len(form) - 15)]
    return whole + runs


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_no_token_in_logs_errors_or_reprs(env: Env) -> None:
    capture = Capture()
    capture.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(exc_info)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    texts: list[str] = []
    try:
        # A success through a runner process.
        ok_id = f"agent-{uuid.uuid4()}"
        handle = await env.client.start_workflow(
            AgentParent.run, AgentRequest(ok_id, "hello"), id=f"parent-{uuid.uuid4()}", task_queue=env.task_queue
        )
        await env.wait_for_execution(ok_id)
        report = await env.run_runner("succeed", ok_id, {"answer": "hi", "tokens_used": 1, "sources": []})
        texts += [str(report), repr(await handle.result())]

        # A failure through a runner process.
        bad_id = f"agent-{uuid.uuid4()}"
        handle = await env.client.start_workflow(
            AgentParent.run, AgentRequest(bad_id, "fail"), id=f"parent-{uuid.uuid4()}", task_queue=env.task_queue
        )
        await env.wait_for_execution(bad_id)
        failure = {"message": "nope", "type": "X", "non_retryable": True, "details": []}
        texts.append(str(await env.run_runner("fail", bad_id, failure)))
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result()
        texts += [str(caught.value), repr(caught.value), str(caught.value.cause), repr(caught.value.cause)]

        # The workflow path (the child's input carries a capability, not the token).
        wf_id = f"workflow-{uuid.uuid4()}"
        await env.client.execute_workflow(
            PipelineParent.run, PipelineRequest(wf_id, [1, 2]), id=f"parent-{uuid.uuid4()}", task_queue=env.task_queue
        )

        # Everything a user could print.
        capability = env.hs.grant(wf_id, ["complete"])
        assert capability not in repr(Callback(execution_id=wf_id, capability=capability)), "a secret too"
        for execution_id in (ok_id, bad_id, wf_id):
            record = await env.hs.inspect(execution_id)
            texts += [repr(record), str(record), str(await env.hs.get(execution_id))]
        for token in env.activities.tokens_seen:
            parsed = TaskToken(token)
            texts += [repr(parsed), str(parsed)]
            # Errors about this token: a dead token and a damaged one.
            for attempt in (token, token[:-3]):
                try:
                    await env.hs.complete_activity("late", token=attempt)
                except HandshakeError as err:
                    texts += [str(err), repr(err)]
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)

    assert len(env.activities.tokens_seen) == 3
    corpus = "\n".join(capture.lines + texts)
    assert "tok-" in corpus, "fingerprints are what shows up instead"
    for token in env.activities.tokens_seen:
        leaks = [form for form in token_forms(token) if form in corpus]
        assert not leaks, f"token {TaskToken(token).fingerprint} shows up in output: {leaks[:3]}"
