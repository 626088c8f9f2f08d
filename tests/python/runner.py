"""A runner process for the end-to-end tests: settles one execution from outside the worker's process.

    python tests/python/runner.py STORE_URL TEMPORAL_URL MODE EXECUTION_ID [JSON]

MODE is succeed (JSON result), hold_then_succeed (JSON {"seconds", "answer"}: claim, watch the parent's
signals for that long, then succeed), fail (JSON {message, type, non_retryable, details}), cancel (heartbeat
until the parent asks to cancel, then report it), hold (claim and wait to be killed) or timed (JSON
{"ids", "pause"}: succeed each id in turn, a pause apart, and report when each settle had returned) or
metrics (JSON {"ids"}: succeed each with its answer, try one unknown id, then report what this process's
metrics endpoint serves).
Prints one JSON line: {"pid", "outcome", ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.request

from stigmer_handshake import ExecutionNotFound, Handshake


async def main(store: str, temporal: str, mode: str, execution_id: str, arg: str) -> dict[str, object]:
    hs = await Handshake.connect(store=store, temporal=temporal)
    report: dict[str, object] = {"pid": os.getpid()}
    if mode == "succeed":
        settlement = await hs.succeed(execution_id, json.loads(arg))
    elif mode == "fail":
        spec = json.loads(arg)
        settlement = await hs.fail(
            execution_id,
            spec["message"],
            type=spec["type"],
            non_retryable=spec["non_retryable"],
            details=spec["details"],
        )
    elif mode == "timed":
        spec = json.loads(arg)
        settled_at = {}
        for each in spec["ids"]:
            await asyncio.sleep(spec["pause"])
            settlement = await hs.succeed(each, {"done": each})
            settled_at[each] = time.time()
        report["settled_at"] = settled_at
    elif mode == "metrics":
        for each, answer in json.loads(arg)["answers"].items():
            settlement = await hs.succeed(each, answer)
        with contextlib.suppress(ExecutionNotFound):
            await hs.succeed("no-such-execution", None)
        with hs.serve_metrics() as server:
            reply = await asyncio.to_thread(urllib.request.urlopen, server.url)
            report["content_type"] = reply.headers["Content-Type"]
            report["metrics"] = reply.read().decode()
    elif mode == "hold_then_succeed":  # JSON {"seconds", "answer"}: claim, let the pump keep it, then succeed
        spec = json.loads(arg)
        [claimed] = await hs.claim("agent")
        assert claimed.metadata.id == execution_id, claimed.metadata.id
        gone_seen, deadline = False, time.monotonic() + spec["seconds"]
        while time.monotonic() < deadline:
            signals = hs.parent_signals(execution_id)
            gone_seen = gone_seen or (signals is not None and signals.parent_gone)
            await asyncio.sleep(0.1)
        report["parent_gone_seen"] = gone_seen
        settlement = await hs.succeed(execution_id, spec["answer"])
        report["reason"] = settlement.reason
    elif mode == "hold":  # claim it, so this process heartbeats its parent, and wait to be killed
        [claimed] = await hs.claim("agent", lease=1.0)
        print(json.dumps({"pid": os.getpid(), "claimed": claimed.metadata.id}), flush=True)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
    elif mode == "cancel":
        beats = 0
        while True:
            beats += 1
            reply = await hs.heartbeat(execution_id, {"beat": beats})
            if reply.cancel_requested:
                break
            await asyncio.sleep(0.2)
        report["heartbeats"] = beats
        settlement = await hs.cancel(execution_id, "stopped on request")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    report["outcome"] = settlement.outcome
    return report


if __name__ == "__main__":
    store, temporal, mode, execution_id, *rest = sys.argv[1:]
    print(json.dumps(asyncio.run(main(store, temporal, mode, execution_id, rest[0] if rest else "null"))))
