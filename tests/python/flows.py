"""Workflows and activities shared by the end-to-end tests (and imported by the runner subprocess)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from stigmer_handshake import pb
    from stigmer_handshake.handshake import Handshake
    from stigmer_handshake.workflow import Callback, complete_external_activity, fail_external_activity

NO_RETRY = RetryPolicy(maximum_attempts=1)


@dataclass
class AgentRequest:
    execution_id: str
    prompt: str


@dataclass
class AgentAnswer:
    answer: str
    tokens_used: int
    sources: list[str]


@dataclass
class PipelineRequest:
    execution_id: str
    numbers: list[int]
    fail_with: str = ""


@dataclass
class PipelineResult:
    total: int
    count: int


class CallerActivities:
    """Caller activities: each defers to a child and frees its slot."""

    def __init__(self, hs: Handshake, child_task_queue: str = "") -> None:
        self.hs = hs
        self.child_task_queue = child_task_queue
        self.tokens_seen: list[bytes] = []

    @activity.defn
    async def run_agent(self, request: AgentRequest) -> AgentAnswer:
        self.tokens_seen.append(activity.info().task_token)
        spec = pb.AgentExecutionSpec(agent_id="researcher", message=request.prompt)
        await self.hs.defer(spec, execution_id=request.execution_id)

    @activity.defn
    async def run_pipeline(self, request: PipelineRequest) -> PipelineResult:
        self.tokens_seen.append(activity.info().task_token)
        spec = pb.WorkflowExecutionSpec(workflow_instance_id="sum-pipeline", trigger_message="sum")
        await self.hs.defer_to_workflow(
            ChildPipeline.run,
            request,
            spec=spec,
            task_queue=self.child_task_queue,
            execution_id=request.execution_id,
        )

    @activity.defn
    async def quick(self, value: int) -> int:
        return value * 2


@workflow.defn
class AgentParent:
    @workflow.run
    async def run(self, request: AgentRequest) -> AgentAnswer:
        return await workflow.execute_activity_method(
            CallerActivities.run_agent,
            request,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=NO_RETRY,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )


@workflow.defn
class QuickParent:
    @workflow.run
    async def run(self, value: int) -> int:
        return await workflow.execute_activity_method(
            CallerActivities.quick, value, start_to_close_timeout=timedelta(seconds=30), retry_policy=NO_RETRY
        )


@workflow.defn
class PipelineParent:
    @workflow.run
    async def run(self, request: PipelineRequest) -> PipelineResult:
        return await workflow.execute_activity_method(
            CallerActivities.run_pipeline,
            request,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=NO_RETRY,
        )


@workflow.defn
class ChildPipeline:
    """The child workflow: does the work, then settles its parent through the system activities."""

    @workflow.run
    async def run(self, callback: Callback, request: PipelineRequest) -> None:
        if request.fail_with:
            await fail_external_activity(
                callback, f"pipeline failed: {request.fail_with}", type=request.fail_with, non_retryable=True
            )
            return
        await workflow.sleep(timedelta(milliseconds=200))
        await complete_external_activity(
            callback, PipelineResult(total=sum(request.numbers), count=len(request.numbers))
        )
