"""A person approves a payment through a callback URL: no API key, no Temporal client, no store on their side.

    python examples/webhook_approval.py

1. The parent workflow's activity `ask_approval` defers: it stores a WorkflowExecution with its task token
   and goes pending.
2. The handshake serves HTTP (`hs.serve`); `server.callback_url(...)` mints a URL that can only complete or
   fail this one execution, for a day. It goes to the approver (a chat message, an email, a ticket).
3. The approver's click is one POST: `curl -X POST '<url>:complete' -d '{"approved": true, "by": "dana"}'`
   (here the script sends it itself). A second click answers `already_settled` and changes nothing.
4. The parent activity resumes with a typed `Approval`.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import urllib.request
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from stigmer_handshake import Handshake, pb
    from stigmer_handshake.testing import DevServer, sqlite_url


@dataclass
class Approval:
    approved: bool
    by: str


class Activities:
    def __init__(self, hs: Handshake) -> None:
        self.hs = hs

    @activity.defn
    async def ask_approval(self, amount: int) -> Approval:
        request = pb.WorkflowExecutionSpec(workflow_id="payments", trigger_message=f"approve a payment of {amount} EUR")
        await self.hs.defer(request, execution_id=f"approval-{activity.info().workflow_id}")


@workflow.defn
class PaymentWorkflow:
    @workflow.run
    async def run(self, amount: int) -> Approval:
        return await workflow.execute_activity_method(
            Activities.ask_approval, amount, start_to_close_timeout=timedelta(days=1)
        )


def click(url: str, body: dict[str, object]) -> dict[str, object]:
    """What the approver's browser or a chat bot sends: one POST, no credentials but the URL."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with DevServer() as temporal:
            client = await Client.connect(temporal.address)
            async with await Handshake.connect(store=sqlite_url(tmp), temporal=temporal.url) as hs:
                # Loopback, for the example; a real server takes API keys and TLS (see the README).
                server = await hs.serve("127.0.0.1:0", insecure_localhost=True)
                activities = Activities(hs)
                async with Worker(
                    client, task_queue="payments", workflows=[PaymentWorkflow], activities=[activities.ask_approval]
                ):
                    parent = await client.start_workflow(
                        PaymentWorkflow.run, 120, id="payment-7", task_queue="payments"
                    )
                    while not await hs.list(kind="workflow"):
                        await asyncio.sleep(0.05)
                    url = server.callback_url("approval-payment-7", ("complete", "fail"), ttl=86400)
                    print(f"approver's link: {url[:60]}...")
                    first = await asyncio.to_thread(click, f"{url}:complete", {"approved": True, "by": "dana"})
                    second = await asyncio.to_thread(click, f"{url}:complete", {"approved": False, "by": "eve"})
                    print(f"first click: {first['outcome']}, second click: {second['outcome']}")
                    print(f"parent workflow got: {await parent.result()!r}")


if __name__ == "__main__":
    asyncio.run(main())
