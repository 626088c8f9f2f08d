"""Workflows and activities shared by the end-to-end tests (and imported by the runner subprocess)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from stigmer_handshake import pb
    from stigmer_handshake.handshake import Handshake
    from stigmer_handshake.workflow import Callback, complete_external_activity, fail_external_activity

NO_RETRY = RetryPolicy(maximum_attempts=1)


#: Every task token a caller activity of the suite saw: the last test scans the suite's output for them.
SEEN_TOKENS: list[bytes] = []


@dataclass
class AgentRequest:
    execution_id: str
    prompt: str
    start_to_close_seconds: float = 300
    heartbeat_timeout_seconds: float = 0  # 0: the parent declares no heartbeat timeout
    maximum_attempts: int = 1  # RetriedAgentParent's retry policy
    retry_interval_seconds: float = 0.1


def expected_answer(prompt: str) -> AgentAnswer:
    """What the test runners answer for a prompt, so results can be checked one by one."""
    return AgentAnswer(answer=prompt.upper(), tokens_used=len(prompt), sources=[prompt])


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
    sleep_seconds: float = 0.2


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
        self.instant_settlement: object = None

    @activity.defn
    async def run_agent(self, request: AgentRequest) -> AgentAnswer:
        self.tokens_seen.append(activity.info().task_token)
        SEEN_TOKENS.append(activity.info().task_token)
        spec = pb.AgentExecutionSpec(agent_id="researcher", message=request.prompt)
        await self.hs.defer(spec, execution_id=request.execution_id)

    @activity.defn
    async def run_pipeline(self, request: PipelineRequest) -> PipelineResult:
        self.tokens_seen.append(activity.info().task_token)
        SEEN_TOKENS.append(activity.info().task_token)
        spec = pb.WorkflowExecutionSpec(workflow_instance_id="sum-pipeline", trigger_message="sum")
        await self.hs.defer_to_workflow(
            ChildPipeline.run,
            request,
            spec=spec,
            task_queue=self.child_task_queue,
            execution_id=request.execution_id,
        )

    @activity.defn
    async def run_agent_flaky(self, request: AgentRequest) -> AgentAnswer:
        """Attempt 1 arms its callback, then crashes; attempt 2 defers and re-binds to the same child."""
        self.tokens_seen.append(activity.info().task_token)
        SEEN_TOKENS.append(activity.info().task_token)
        spec = pb.AgentExecutionSpec(agent_id="researcher", message=request.prompt)
        if activity.info().attempt == 1:
            await self.hs.create(spec, execution_id=request.execution_id, token=activity.info().task_token)
            raise RuntimeError("the caller crashed after arming its callback")
        await self.hs.defer(spec, execution_id=request.execution_id)

    @activity.defn
    async def run_agent_instant(self, request: AgentRequest) -> AgentAnswer:
        """The child finishes before this activity has returned "pending"."""
        self.tokens_seen.append(activity.info().task_token)
        SEEN_TOKENS.append(activity.info().task_token)
        spec = pb.AgentExecutionSpec(agent_id="researcher", message=request.prompt)
        execution_id = await self.hs.create(spec, execution_id=request.execution_id, token=activity.info().task_token)
        self.instant_settlement = await self.hs.succeed(execution_id, expected_answer(request.prompt))
        activity.raise_complete_async()

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
            start_to_close_timeout=timedelta(seconds=request.start_to_close_seconds),
            heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_seconds) or None,
            retry_policy=NO_RETRY,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )


@workflow.defn
class FanOutParent:
    """Many agent runs from one parent."""

    @workflow.run
    async def run(self, requests: list[AgentRequest]) -> list[AgentAnswer]:
        calls = [
            workflow.execute_activity_method(
                CallerActivities.run_agent,
                r,
                start_to_close_timeout=timedelta(seconds=r.start_to_close_seconds),
                heartbeat_timeout=timedelta(seconds=r.heartbeat_timeout_seconds) or None,
                retry_policy=NO_RETRY,
            )
            for r in requests
        ]
        return list(await asyncio.gather(*calls))


@workflow.defn
class PatientParent:
    """Survives its activity's timeout and keeps running until told to finish (late-settle test)."""

    def __init__(self) -> None:
        self.finished = False

    @workflow.run
    async def run(self, request: AgentRequest) -> str:
        try:
            await workflow.execute_activity_method(
                CallerActivities.run_agent,
                request,
                start_to_close_timeout=timedelta(seconds=request.start_to_close_seconds),
                retry_policy=NO_RETRY,
            )
            outcome = "completed"
        except ActivityError as err:
            outcome = f"activity failed: {type(err.cause).__name__}"
        await workflow.wait_condition(lambda: self.finished)
        return outcome

    @workflow.signal
    def finish(self) -> None:
        self.finished = True


@workflow.defn
class RetryingParent:
    @workflow.run
    async def run(self, request: AgentRequest) -> AgentAnswer:
        return await workflow.execute_activity_method(
            CallerActivities.run_agent_flaky,
            request,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=3),
        )


@workflow.defn
class RetriedAgentParent:
    """Retries its caller activity: `maximum_attempts` attempts, `retry_interval_seconds` apart."""

    @workflow.run
    async def run(self, request: AgentRequest) -> AgentAnswer:
        return await workflow.execute_activity_method(
            CallerActivities.run_agent,
            request,
            start_to_close_timeout=timedelta(seconds=request.start_to_close_seconds),
            heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_seconds) or None,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=request.retry_interval_seconds),
                backoff_coefficient=1.0,
                maximum_attempts=request.maximum_attempts,
            ),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )


@workflow.defn
class SameActivityIdParent:
    """Calls the caller activity once per request, one after the other, always with activity id "ask"."""

    @workflow.run
    async def run(self, requests: list[AgentRequest]) -> list[AgentAnswer]:
        answers = []
        for request in requests:
            answer = await workflow.execute_activity_method(
                CallerActivities.run_agent,
                request,
                activity_id="ask",
                start_to_close_timeout=timedelta(seconds=request.start_to_close_seconds),
                retry_policy=NO_RETRY,
            )
            answers.append(answer)
        return answers


@workflow.defn
class InstantParent:
    @workflow.run
    async def run(self, request: AgentRequest) -> AgentAnswer:
        return await workflow.execute_activity_method(
            CallerActivities.run_agent_instant,
            request,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=NO_RETRY,
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
        await workflow.sleep(timedelta(seconds=request.sleep_seconds))
        await complete_external_activity(
            callback, PipelineResult(total=sum(request.numbers), count=len(request.numbers))
        )


@workflow.defn
class ForgedChild:
    """A child that was never started for `execution_id`: it tries to fail it with what it carries in place of
    the real child's second Callback field (something fabricated from ids that listings print)."""

    @workflow.run
    async def run(self, execution_id: str, carried: str) -> str:
        try:
            return await fail_external_activity(Callback(execution_id, carried), "forged", non_retryable=True)
        except ActivityError as err:
            return f"refused: {getattr(err.cause, 'type', '')}"


@dataclass
class NetworkRequest:
    """A caller that defers over the network: its activity sends `create` to `server` with its own token."""

    server: str
    api_key: str
    execution_id: str
    prompt: str
    kind: str = "agent"  # or "workflow"
    labels: dict[str, str] | None = None


@activity.defn
async def create_over_grpc(request: NetworkRequest) -> None:
    """A caller activity as a Go or TypeScript one would be: it puts its own task token in the status of a
    new execution, sends `create` over gRPC, and returns "result pending"."""
    from grpc_api import AGENT, WORKFLOW, GrpcApi, agent_pb, workflow_pb

    token = activity.info().task_token
    SEEN_TOKENS.append(token)
    if request.kind == "agent":
        service, resource = (
            f"{AGENT}CommandController",
            agent_pb.AgentExecution(
                metadata=pb.ResourceMetadata(id=request.execution_id, labels=request.labels or {}),
                spec=pb.AgentExecutionSpec(agent_id="researcher", message=request.prompt),
                status=pb.AgentExecutionStatus(callback_token=token),
            ),
        )
    else:
        service, resource = (
            f"{WORKFLOW}CommandController",
            workflow_pb.WorkflowExecution(
                metadata=pb.ResourceMetadata(id=request.execution_id, labels=request.labels or {}),
                spec=pb.WorkflowExecutionSpec(workflow_id="pipeline", trigger_message=request.prompt),
                status=pb.WorkflowExecutionStatus(callback_token=token),
            ),
        )
    async with GrpcApi(request.server, request.api_key) as api:
        created = await api.call(service, "create", resource)
    assert not created.status.callback_token, "create never answers with the token"
    activity.raise_complete_async()


@workflow.defn
class NetworkAgentParent:
    @workflow.run
    async def run(self, request: NetworkRequest) -> AgentAnswer:
        # By name: the activity function is typed `-> None` (it never returns), which would win over result_type.
        return await workflow.execute_activity(
            "create_over_grpc", request, start_to_close_timeout=timedelta(minutes=5), retry_policy=NO_RETRY,
            result_type=AgentAnswer,
        )  # fmt: skip


@workflow.defn
class NetworkWorkflowParent:
    @workflow.run
    async def run(self, request: NetworkRequest) -> dict[str, Any]:
        result: dict[str, Any] = await workflow.execute_activity(
            "create_over_grpc", request, start_to_close_timeout=timedelta(minutes=5), retry_policy=NO_RETRY,
            result_type=dict,
        )  # fmt: skip
        return result


@dataclass
class AskRequest:
    """A step that waits for an answer from outside (a person, a runner): its child is an agent execution
    whose spec message is the question."""

    execution_id: str
    question: str
    heartbeat_timeout_seconds: float = 0  # 0: none (a runner's pump heartbeats within one if given)


class AskActivities:
    def __init__(self, hs: Handshake) -> None:
        self.hs = hs

    @activity.defn
    async def ask(self, request: AskRequest) -> Any:
        SEEN_TOKENS.append(activity.info().task_token)
        await self.hs.defer(pb.AgentExecutionSpec(agent_id="approver", message=request.question),
                            execution_id=request.execution_id)  # fmt: skip


@workflow.defn
class AskParent:
    @workflow.run
    async def run(self, request: AskRequest) -> Any:
        return await workflow.execute_activity_method(
            AskActivities.ask, request, start_to_close_timeout=timedelta(minutes=5), retry_policy=NO_RETRY,
            heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_seconds) or None,
        )  # fmt: skip
