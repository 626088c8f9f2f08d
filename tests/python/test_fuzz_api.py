"""Hypothesis drives the public API for a bounded time (`STIGMER_HANDSHAKE_FUZZ_SECONDS`, default 15): any
method of `Handshake`, with arguments drawn from its annotations and from junk (text with surrogates, NULs
and invisible characters, bytes, huge and non-finite numbers, None, nested lists). Every call returns or
raises a `HandshakeError` (never another exception, a hang or a crash), and a refused call changes nothing
in the store: every execution reads back exactly as before it. Real dev server, real SQLite store.

The methods come from the class, so a new one is fuzzed by default (or must be named in SKIPPED, with why).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stigmer_handshake import Handshake, HandshakeError, pb
from stigmer_handshake._checks import type_hints
from stigmer_handshake.testing import DevServer, sqlite_url

SECONDS = float(os.environ.get("STIGMER_HANDSHAKE_FUZZ_SECONDS", "15"))
SKIPPED = {
    "connect": "opens stores wherever its URL says (the bad-input table covers its arguments)",
    "serve_metrics": "binds ports",
    "start_reconciler": "starts a background loop (the bad-input table covers its arguments)",
    "stop_reconciler": "no arguments",
    "close": "no arguments, and it ends the handshake the fuzzer calls",
    "update_api_key": "sends its argument as a header (the bad-input table covers its arguments)",
    "wait_for_signal": "waits for a signal by design",
    "cancellation": "waits for a signal by design",
    "activities": "a property",
}
#: How long a call may take; only `wait` may wait longer, when asked to.
PATIENCE = 3.0

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.sampled_from(["", "\x00", "a\u202eb", "a\u2028b", "a\u200bb", "\ud800", "x" * 1000]),
    st.binary(max_size=64),
    st.lists(st.integers(), max_size=3),
)


@dataclass(frozen=True)
class KnownId:
    """One of the executions made so far (which grow as the test runs): the n-th, modulo their number."""

    n: int


def strategy(hint: Any, name: str) -> st.SearchStrategy[Any]:
    """Values of the annotation `hint`, and junk; execution ids are mostly real ones."""
    if name == "execution_id":
        return st.one_of(st.builds(KnownId, st.integers(min_value=0, max_value=1000)), JUNK)
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy(arm, name) for arm in get_args(hint)))
    if hint is type(None) or hint is None:
        return st.none()
    if origin is typing.Literal:
        return st.one_of(st.sampled_from(get_args(hint)), JUNK)
    if hint is float:
        return st.one_of(st.floats(min_value=0, max_value=1), JUNK)  # timeouts, leases, ttls: short
    if hint is int:
        return st.one_of(st.integers(min_value=-5, max_value=1000), JUNK)
    if hint is bool:
        return st.one_of(st.booleans(), JUNK)
    if hint is bytes:
        return st.one_of(st.binary(max_size=200), JUNK)
    if isinstance(hint, type) and issubclass(hint, Message):
        messages = [pb.AgentExecutionSpec(agent_id="a", message="m"), pb.WorkflowExecutionSpec(), pb.ExecutionError()]
        statuses = [pb.AgentExecutionStatus(phase=p) for p in range(6)]
        return st.one_of(st.sampled_from(messages + statuses), JUNK)
    return JUNK


async def snapshot(hs: Handshake) -> list[tuple[Any, ...]]:
    """Everything the store holds of every execution, in one read."""
    fields = ("id", "phase", "status", "callback_state", "outcome", "result", "delivery_attempts", "updated_at")
    return [tuple(getattr(e, f) for f in fields) for e in await hs.list(limit=1_000_000)]


def methods() -> dict[str, inspect.Signature]:
    found = {}
    for name, member in inspect.getmembers(Handshake):
        if name.startswith("_") or name in SKIPPED:
            continue
        function = inspect.unwrap(member)
        signature = inspect.signature(function)
        hints = type_hints(function)
        found[name] = signature.replace(
            parameters=[p.replace(annotation=hints.get(p.name, Any)) for p in list(signature.parameters.values())[1:]]
        )
    return found


@pytest.mark.timeout(SECONDS + 120)
def test_any_arguments_to_any_method_return_or_raise_a_handshake_error_and_refusals_change_nothing(
    temporal_server: DevServer, tmp_path: Path
) -> None:
    loop = asyncio.new_event_loop()
    hs = loop.run_until_complete(Handshake.connect(store=sqlite_url(tmp_path), temporal=temporal_server.url))
    spec = pb.AgentExecutionSpec(agent_id="a", message="m")
    ids = [loop.run_until_complete(hs.create(spec)) for _ in range(3)]
    table = methods()
    untyped: list[str] = []
    calls = {"returned": 0, "refused": 0}

    async def one(name: str, drawn: dict[str, Any]) -> None:
        ids.append(await hs.create(spec))  # always one pending execution to spoil
        arguments = {k: ids[v.n % len(ids)] if isinstance(v, KnownId) else v for k, v in drawn.items()}
        before = await snapshot(hs)
        try:
            result = getattr(hs, name)(**arguments)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, timeout=PATIENCE)
            calls["returned"] += 1
        except HandshakeError:
            calls["refused"] += 1
            assert await snapshot(hs) == before, f"{name}({arguments!r:.200}) was refused but changed the store"
        except TimeoutError:
            timeout = arguments.get("timeout")
            if not (name == "wait" and (timeout is None or not timeout < PATIENCE)):
                untyped.append(f"{name}({arguments!r:.200}): no answer in {PATIENCE} s")
        except Exception as err:  # what the test is for
            untyped.append(f"{name}({arguments!r:.200}): {type(err).__name__}: {err}")

    @st.composite
    def call(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
        name = draw(st.sampled_from(sorted(table)))
        arguments = {}
        for parameter in table[name].parameters.values():
            if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            required = parameter.default is inspect.Parameter.empty
            if required or draw(st.booleans()):
                arguments[parameter.name] = draw(strategy(parameter.annotation, parameter.name))
        return name, arguments

    deadline = time.monotonic() + SECONDS

    @settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(call())
    def batch(drawn: tuple[str, dict[str, Any]]) -> None:
        if time.monotonic() < deadline:
            loop.run_until_complete(one(*drawn))

    try:
        while time.monotonic() < deadline and not untyped:
            batch()
    finally:
        loop.close()
    total = calls["returned"] + calls["refused"]
    print(f"\nAPI fuzz: {total} calls over {len(table)} methods in {SECONDS:.0f} s: {calls}, {len(untyped)} untyped")
    assert not untyped, "\n".join(untyped[:10])
    assert total > 100 and calls["refused"] > 0 and calls["returned"] > 0
