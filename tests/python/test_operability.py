"""Operability: the metrics endpoint counts exactly what happened, spans tie defer to settle and delivery by
the token's fingerprint, and the example notebook runs headless and renders readable tables."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from browser import chromium

from stigmer_handshake.metrics import parse

from conftest import Env
from flows import AgentParent, AgentRequest, expected_answer

ROOT = Path(__file__).resolve().parents[2]
SETTLES = 8


async def test_metrics_endpoint_counts_every_settle_and_delivery(env: Env) -> None:
    requests = [AgentRequest(f"metrics-{i}-{uuid.uuid4().hex[:6]}", f"metrics {i}") for i in range(SETTLES)]
    handles = [
        await env.client.start_workflow(AgentParent.run, r, id=f"metrics-{uuid.uuid4()}", task_queue=env.task_queue)
        for r in requests
    ]
    for r in requests:
        await env.wait_for_execution(r.execution_id)
    answers = {r.execution_id: dataclasses.asdict(expected_answer(r.prompt)) for r in requests}
    report = await env.run_runner("metrics", "-", {"answers": answers})
    for r, h in zip(requests, handles, strict=True):
        assert await h.result() == expected_answer(r.prompt)

    assert str(report["content_type"]).startswith("application/openmetrics-text")
    text = str(report["metrics"])
    samples = parse(text)
    settled = {k: v for k, v in samples.items() if k.startswith("stigmer_handshake_settled_total")}
    assert settled == {'stigmer_handshake_settled_total{kind="agent",outcome="delivered"}': SETTLES}, settled
    assert samples["stigmer_handshake_delivery_duration_seconds_count"] == SETTLES
    assert 0 < samples["stigmer_handshake_delivery_duration_seconds_sum"] < SETTLES * 10
    assert samples['stigmer_handshake_errors_total{type="ExecutionNotFound"}'] == 1
    assert samples['stigmer_handshake_pending{age="lt_1m"}'] == 0, "every parent was told"
    assert "stigmer_handshake_heartbeats_total" in samples
    assert text.rstrip().endswith("# EOF")

    # In-process, the pending gauge sees the parents that still wait.
    request = AgentRequest(f"metrics-waiting-{uuid.uuid4().hex[:6]}", "waits")
    await env.client.start_workflow(AgentParent.run, request, id=f"metrics-{uuid.uuid4()}", task_queue=env.task_queue)
    await env.wait_for_execution(request.execution_id)
    snapshot = await env.hs.metrics_snapshot()
    assert snapshot['stigmer_handshake_pending{age="lt_1m"}'] == 1
    assert snapshot['stigmer_handshake_pending{age="ge_1d"}'] == 0


def spans(stderr: str) -> list[dict[str, Any]]:
    """The JSON events the core wrote (other lines, e.g. the dev server's, are skipped)."""
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


@pytest.mark.timeout(120)
def test_spans_link_defer_settle_and_delivery_by_fingerprint() -> None:
    environment = {**os.environ, "STIGMER_HANDSHAKE_LOG": "_core=info", "STIGMER_HANDSHAKE_LOG_FORMAT": "json"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "agent_path.py")],
        capture_output=True, text=True, timeout=100, env=environment, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    events = spans(done.stderr)
    closed = {e["span"]["name"]: e for e in events if e.get("fields", {}).get("message") == "close"}
    assert {"defer", "settle", "deliver"} <= closed.keys(), sorted(closed)
    fingerprint = closed["defer"]["span"]["token"]
    assert fingerprint.startswith("tok-")
    assert closed["deliver"]["span"]["token"] == fingerprint, "the pending gap is bridged by the fingerprint"
    assert closed["deliver"]["span"]["result"] == "delivered"
    assert closed["settle"]["span"]["result"] == "delivered"
    assert [s["name"] for s in closed["deliver"]["spans"]] == ["settle"], "delivery runs inside the settle"
    assert closed["defer"]["span"]["execution"] == closed["settle"]["span"]["execution"]
    pending = [e for e in events if "pending" in e.get("fields", {}).get("message", "")]
    assert pending and {e["level"] for e in pending} == {"INFO"}, "going pending is not an error"
    assert not [e for e in events if e["level"] in ("ERROR", "WARN")]


@pytest.mark.timeout(200)
async def test_example_notebook_runs_headless_and_renders_tables(tmp_path: Path) -> None:
    executed = tmp_path / "executed.ipynb"
    script = (
        "import sys, nbformat, nbclient\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "nbclient.NotebookClient(nb, timeout=150, kernel_name='python3', resources={'metadata': {'path': sys.argv[3]}})"
        ".execute()\n"
        "nbformat.write(nb, sys.argv[2])\n"
    )
    before = set(os.listdir(tempfile.gettempdir()))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, str(ROOT / "examples" / "notebook.ipynb"), str(executed), str(tmp_path)],
        capture_output=True, text=True, timeout=190, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    left = set(os.listdir(tempfile.gettempdir())) - before
    assert not {name for name in left if "temporal" in name or "stigmer" in name}, (
        f"left in the temporary folder: {left}"
    )
    notebook = json.loads(executed.read_text())
    outputs = [o for cell in notebook["cells"] if cell["cell_type"] == "code" for o in cell["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert not [o for o in outputs if o.get("name") == "stderr"], "nothing on stderr (a red box) on a normal run"
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    rendered = "".join("".join(h) if isinstance(h, list) else h for h in html)
    assert rendered.count("<table") >= 4, "executions, a token, a settlement and the finished list render as tables"
    assert "tok-" in rendered and "delivered" in rendered
    # Rendered narrow, as in a notebook's column: no id or fingerprint breaks across lines.
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 480, "height": 800})
        await page.set_content(f"<!doctype html><body>{rendered}</body>")
        broken = await page.evaluate("""() => [...document.querySelectorAll("td")]
            .filter((td) => td.textContent && !/\\s/.test(td.textContent))
            .filter((td) => { const r = document.createRange(); r.selectNodeContents(td);
                              return new Set([...r.getClientRects()].map((b) => Math.round(b.top))).size > 1; })
            .map((td) => td.textContent)""")
        assert broken == [], f"wrapped mid-token: {broken}"
        assert await page.locator("td", has_text="tok-").count() >= 1
