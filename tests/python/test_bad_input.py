"""Every public function and method of the package, given wrong types, None, empty, huge, negative or
malformed arguments, raises a typed error from the package's hierarchy: never a bare TypeError, a hang, or
a crash. The cases are generated from the signatures; each call starts from good arguments and spoils one.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

from google.protobuf.message import Message

from stigmer_handshake import Handshake, HandshakeError, TaskToken, _core, pb
from stigmer_handshake._checks import type_hints
from stigmer_handshake.testing import DevServer, sqlite_url

HUGE_TEXT = "x" * (4 * 1024 * 1024)
HUGE_BYTES = b"\xff" * (4 * 1024 * 1024)
SPEC = pb.AgentExecutionSpec(agent_id="a", message="m")
STATUS = pb.AgentExecutionStatus(phase=pb.ExecutionPhase.EXECUTION_PHASE_IN_PROGRESS)


def good_arguments(execution_id: str) -> dict[str, dict[str, Any]]:
    """For each method, arguments that are all good, one of which each case spoils."""
    target = {"workflow_id": "wf", "activity_id": "1"}
    return {
        "connect": {"store": "sqlite::memory:", "temporal": None},
        "update_api_key": {"api_key": "a-key"},
        "create": {"spec": SPEC},
        "claim": {"kind": "agent", "limit": 1, "lease": 30.0},
        "update_status": {"execution_id": execution_id, "status": STATUS},
        "report_progress": {"execution_id": execution_id},
        "parent_signals": {"execution_id": execution_id},
        "wait_for_signal": {"execution_id": execution_id},
        "cancellation": {"execution_id": execution_id},
        "heartbeat": {"execution_id": execution_id},
        "succeed": {"execution_id": execution_id},
        "fail": {"execution_id": execution_id, "message": "m"},
        "cancel": {"execution_id": execution_id},
        "redeliver": {"execution_id": execution_id},
        "grant": {"execution_id": execution_id, "outcomes": ["complete"], "ttl": 60.0},
        "get": {"execution_id": execution_id},
        "inspect": {"execution_id": execution_id},
        "list": {"limit": 10},
        "iterate": {"page_size": 10},
        "prune": {"older_than": 3600.0},
        "wait": {"execution_id": execution_id, "timeout": 0.2},
        "result": {"execution_id": execution_id},
        "start_reconciler": {"interval": 5.0},
        "serve_metrics": {"port": 0, "host": "127.0.0.1"},
        "complete_activity": dict(target),
        "fail_activity": {"message": "m", **target},
        "report_activity_cancellation": dict(target),
        "heartbeat_activity": dict(target),
        "defer": {"spec": SPEC},
        "serve": {"listen": "127.0.0.1:0", "insecure_localhost": True},
        "callback_url": {"execution_id": execution_id, "base_url": "http://127.0.0.1:1"},
        "defer_to_workflow": {"workflow": "Child", "arg": 1, "spec": pb.WorkflowExecutionSpec(), "task_queue": "q"},
    }


def spoiled(hint: Any, name: str) -> list[Any]:
    """Values no argument of this annotation may take: wrong types, None, empty, huge, negative, malformed."""
    if hint is Any:
        return []
    arms = get_args(hint) if get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in arms
    arms = tuple(a for a in arms if a is not type(None))
    values: list[Any] = [object()]
    if not optional:
        values.append(None)
    for arm in arms:
        origin = get_origin(arm)
        if arm is str:
            # Text Rust and the stores cannot hold (a lone surrogate, a NUL) is refused in every string.
            values += [12, b"bytes", "lone \ud800 surrogate", "a \x00 NUL"]
            if name != "run_id" and name != "type" and name != "message":  # these may be empty or long
                values += [""]
            if name in ("execution_id", "kind", "phase", "store", "temporal", "host", "workflow_id", "activity_id"):
                values += [HUGE_TEXT, "\x00"]
            if name == "execution_id":  # lookalikes in listings: bidirectional overrides, separators, zero width
                values += ["agent\u202e1", "agent\u20281", "agent\u200b1"]
        elif arm is int:
            values += ["1", 1.5, True, -1, 2**63, 2**80]
        elif arm is float:
            values += ["1", -1.0, math.nan, math.inf, -math.inf]
        elif arm is bytes:
            values += ["text", 12, b"", HUGE_BYTES, b"\x00garbage", released_view()]
        elif arm is bool:
            values += ["yes"]
        elif origin is typing.Literal:
            values += ["nope", ""]
        elif origin in (Sequence, list):
            values += [[object()]] + ([] if str in arms else ["not a list"])
        elif origin in (Mapping, dict) and get_args(arm)[1:] == (str,):  # labels
            values += [[("k", "v")], {"k": b"bytes"}, {"": "v"}, {"k": "\x00"}, {"k": HUGE_TEXT}]
        elif origin in (Mapping, dict):
            values += [[("k", b"")], {"k": "not bytes"}, {"k": b"short"}]
        elif isinstance(arm, type) and issubclass(arm, Message):
            values += [b"raw bytes", "text", pb.ExecutionError()]
        elif origin is type or arm is Callable or origin is Callable:
            values += [12]
    return values


def released_view() -> memoryview:
    view = memoryview(b"token bytes")
    view.release()
    return view


def cases(hs: Handshake, execution_id: str) -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    good = good_arguments(execution_id)
    table = []
    for name, member in inspect.getmembers(Handshake):
        if name.startswith("_") or isinstance(inspect.getattr_static(Handshake, name), property):
            continue
        if name in (
            "activities", "close", "metrics", "metrics_snapshot", "pump_stats", "reconcile", "stop_reconciler",
            "undelivered",
        ):  # fmt: skip
            continue  # no arguments to spoil
        method = getattr(hs, name)
        signature = inspect.signature(inspect.unwrap(member))
        hints = type_hints(inspect.unwrap(member))
        assert name in good, f"{name}: add its good arguments to the table"
        for parameter in list(signature.parameters.values())[1:]:
            if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            for value in spoiled(hints.get(parameter.name, Any), parameter.name):
                table.append(
                    (f"{name}({parameter.name}={_short(value)})", method, {**good[name], parameter.name: value})
                )
    return table


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 30 else text[:27] + "..."


async def call(method: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    result = method(**arguments)
    if inspect.isawaitable(result):
        result = await asyncio.wait_for(result, timeout=10)
    if inspect.isasyncgen(result):  # its arguments are used at its first step
        result = await asyncio.wait_for(anext(result, None), timeout=10)
    return result


async def test_every_public_callable_rejects_bad_arguments_with_typed_errors(tmp_path: Path) -> None:
    async with DevServer(db_filename=str(tmp_path / "temporal.db")) as server:  # kept for the last test's scan
        hs = await Handshake.connect(store=sqlite_url(tmp_path), temporal=server.url, capability_keys=[bytes(32)])
        execution_id = await hs.create(SPEC)
        table = cases(hs, execution_id)
        untyped = []
        for label, method, arguments in table:
            try:
                result = await call(method, arguments)
            except HandshakeError:
                continue
            except Exception as err:
                untyped.append(f"{label}: {type(err).__name__}: {err}")
                continue
            if hasattr(result, "close"):
                result.close()
            untyped.append(f"{label}: accepted (returned {_short(result)})")

        # Module-level functions and constructors.
        functions = [
            ("TaskToken", TaskToken, [None, 12, "text", b"", HUGE_BYTES, b"\x00garbage"]),
            ("fingerprint_bytes", _core.fingerprint_bytes, [None, 12, "text"]),
        ]
        for name, function, values in functions:
            for value in values:
                try:
                    function(value)
                except HandshakeError:
                    continue
                except Exception as err:
                    untyped.append(f"{name}({_short(value)}): {type(err).__name__}: {err}")
                    continue
                untyped.append(f"{name}({_short(value)}): accepted")
        count = len(table) + sum(len(v) for _, _, v in functions)
        print(f"\nbad input: {count} cases over {len({c[0].split('(')[0] for c in table}) + len(functions)} callables")
        assert not untyped, "\n".join(untyped)
        assert count > 300
