"""The workflow path: a caller activity hands its token to a child Temporal workflow.

    python examples/workflow_path.py

The child cannot call a client (determinism), so it ends through the package's system activities,
`complete_external_activity` / `fail_external_activity`, registered on its worker from `hs.activities`.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from stigmer_handshake import Handshake, pb
    from stigmer_handshake.testing import DevServer, sqlite_url
    from stigmer_handshake.workflow import Callback, complete_external_activity, fail_external_activity


@dataclass
class Order:
    items: list[str]


@dataclass
class Receipt:
    order_size: int
    status: str


class Activities:
    def __init__(self, hs: Handshake) -> None:
        self.hs = hs

    @activity.defn
    async def fulfil(self, order: Order) -> Receipt:
        spec = pb.WorkflowExecutionSpec(workflow_instance_id="fulfilment", trigger_message="new order")
        # Stores the WorkflowExecution with the token, starts the child (token in its input, its id in
        # status.temporal_workflow_id), then goes pending.
        await self.hs.defer_to_workflow(FulfilmentWorkflow.run, order, spec=spec, task_queue="orders")


@workflow.defn
class FulfilmentWorkflow:
    @workflow.run
    async def run(self, callback: Callback, order: Order) -> None:
        if not order.items:
            await fail_external_activity(callback, "empty order", type="EMPTY_ORDER", non_retryable=True)
            return
        await workflow.sleep(timedelta(seconds=1))  # picking, packing, shipping...
        await complete_external_activity(callback, Receipt(order_size=len(order.items), status="shipped"))


@workflow.defn
class OrderWorkflow:
    @workflow.run
    async def run(self, order: Order) -> Receipt:
        return await workflow.execute_activity_method(
            Activities.fulfil, order, start_to_close_timeout=timedelta(hours=1)
        )


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with DevServer() as server:
            client = await Client.connect(server.address)
            hs = await Handshake.connect(store=sqlite_url(tmp), temporal=server.url)
            acts = Activities(hs)
            async with Worker(
                client,
                task_queue="orders",
                workflows=[OrderWorkflow, FulfilmentWorkflow],
                activities=[acts.fulfil, *hs.activities],
            ):
                receipt = await client.execute_workflow(
                    OrderWorkflow.run, Order(["kettle", "mug"]), id="order-1", task_queue="orders"
                )
            print(f"parent workflow got: {receipt!r}")
            [record] = await hs.list(kind="workflow")
            execution = await hs.get(record.id, kind="workflow")
            print(
                f"execution {record.id}: phase {record.phase}, child workflow "
                f"{execution.status.temporal_workflow_id}, callback {record.callback_state}"
            )


if __name__ == "__main__":
    asyncio.run(main())
