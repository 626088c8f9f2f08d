"""The console (`stigmer-handshake serve` at `/`) in a real browser: Playwright driving Debian's Chromium
(installed by `make system-packages`), against a real Temporal dev server, a real store and real parent
workflows. Nothing is mocked: what a person sees and clicks is what the page does.

Screenshots of the overview and of one execution go to `$CONSOLE_SCREENSHOTS` when it is set (the README's
images in `docs/` are made so: `CONSOLE_SCREENSHOTS=docs .venv/bin/python -m pytest tests/python/test_console.py`).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from browser import chromium
from playwright.async_api import Browser, BrowserContext, Page, expect
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import TLSConfig
from temporalio.worker import Worker

from stigmer_handshake import ApiKey, Handshake, pb
from stigmer_handshake.testing import DevServer, sqlite_url

from conftest import BOTH_STORES
from flows import AskActivities, AskParent, AskRequest
from tls_front import TlsFront, free_port
from token_scan import SEEN_SECRETS

STORE_BACKENDS = BOTH_STORES

KEYS = {
    "ops": ApiKey("ops", "ops-" + uuid.uuid4().hex, ("settle", "read")),
    "viewer": ApiKey("viewer", "viewer-" + uuid.uuid4().hex, ("read",)),
}
SEEN_SECRETS.extend(k.secret.encode() for k in KEYS.values())
XSS = ["<script>window.__xss = 1</script>", '<img src=x onerror="window.__xss = 2">']


@pytest_asyncio.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@dataclass
class Console:
    hs: Handshake
    url: str
    client: Client
    task_queue: str
    browser: Browser
    errors: list[str] = field(default_factory=list)

    def unexpected_errors(self) -> list[str]:
        """What the pages logged as errors, but for the refusals a test provoked (Chromium logs each 4xx)."""
        return [e for e in self.errors if "Failed to load resource: the server responded with a status of 4" not in e]

    async def page(self, key: str | None = "ops", *, keyboard: bool = False) -> Page:
        """A fresh browser profile (no cookies), signed in through the form with `key` if given (typed and
        sent with Enter, as a keyboard user does, with `keyboard`)."""
        context: BrowserContext = await self.browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        await page.goto(self.url + "/")
        if key is not None and keyboard:
            await expect(page.get_by_label("API key")).to_be_focused()
            await page.keyboard.type(KEYS[key].secret)
            await page.keyboard.press("Enter")
        elif key is not None:
            await page.get_by_label("API key").fill(KEYS[key].secret)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.locator("#who")).to_contain_text(KEYS[key].name)
        return page

    async def ask(
        self, question: str, execution_id: str | None = None, heartbeat_timeout: float = 0
    ) -> tuple[str, WorkflowHandle[Any, Any]]:
        """A parent workflow whose step waits on a new execution; returns once the execution is stored."""
        execution_id = execution_id or f"ask-{uuid.uuid4()}"
        request = AskRequest(execution_id, question, heartbeat_timeout)
        handle = await self.client.start_workflow(
            AskParent.run, request, id=f"parent-{execution_id}", task_queue=self.task_queue
        )
        for _ in range(400):
            try:
                await self.hs.inspect(execution_id)
                return execution_id, handle
            except Exception:
                await asyncio.sleep(0.05)
        raise AssertionError("the parent's activity never stored its execution")


@pytest_asyncio.fixture
async def console(
    temporal_server: DevServer, temporal_client: Client, store_url: str, browser: Browser
) -> AsyncIterator[Console]:
    async with await Handshake.connect(store=store_url, temporal=temporal_server.url) as hs:
        server = await hs.serve(api_keys=list(KEYS.values()), temporal_ui="http://localhost:8233")
        task_queue = f"console-{uuid.uuid4()}"
        async with Worker(temporal_client, task_queue=task_queue, workflows=[AskParent],
                          activities=[AskActivities(hs).ask]):  # fmt: skip
            console = Console(hs, server.url, temporal_client, task_queue, browser)
            yield console
            assert console.unexpected_errors() == [], "the pages logged errors"


async def test_the_list_shows_new_executions_and_their_settles_live_while_a_runner_works(console: Console) -> None:
    batch = uuid.uuid4().hex[:8]
    page = await console.page()
    await page.goto(f"{console.url}/#/executions?text=live-{batch}")
    await expect(page.locator("#shown")).to_have_text("0 shown")
    await page.evaluate("window.__same_page = true")
    parents = await asyncio.gather(*(console.ask(f"question {i}", f"live-{batch}-{i:02}") for i in range(50)))
    rows = page.locator("#executions tbody tr")
    await expect(rows).to_have_count(50, timeout=15_000)
    await expect(page.locator("#executions tbody .badge.PENDING")).to_have_count(50)

    async def runner() -> int:
        settled = 0
        while settled < 50:
            claimed = await console.hs.claim("agent", limit=5, wait=5)
            for execution in claimed:
                await asyncio.sleep(0.05)  # some work
                await console.hs.succeed(execution.metadata.id, {"answer": execution.spec.message.upper()})
                settled += 1
        return settled

    work = asyncio.create_task(runner())
    # While the runner works, the page shows some settled and some not, without a reload.
    await expect(page.locator("#executions tbody .badge.delivered").first).to_be_visible(timeout=15_000)
    assert await work == 50
    await expect(page.locator("#executions tbody .badge.COMPLETED")).to_have_count(50, timeout=15_000)
    await expect(page.locator("#executions tbody .badge.delivered")).to_have_count(50)
    assert await page.evaluate("window.__same_page") is True, "the page was reloaded"
    results = await asyncio.gather(*(handle.result() for _, handle in parents))
    assert results == [{"answer": f"QUESTION {i}"} for i in range(50)]


async def test_a_person_approves_through_the_callback_url_once_and_rejects_another(console: Console) -> None:
    execution_id, parent = await console.ask("Pay invoice 4711 (1,200 EUR)?")
    url = console.hs.callback_url(execution_id, base_url=console.url)
    context = await console.browser.new_context()  # no account, no cookie
    first, second = await context.new_page(), await context.new_page()
    for tab in (first, second):
        await tab.goto(url)
        await expect(tab.locator("#ask")).to_have_text("Pay invoice 4711 (1,200 EUR)?")
    await first.get_by_label("Comment (optional)").fill("ok, within budget")
    await first.get_by_role("button", name="Approve").click()
    await expect(first.locator("#outcome")).to_contain_text("Approved")
    assert await parent.result() == {"approved": True, "comment": "ok, within budget"}
    # The other tab still shows the buttons: its click is told plainly, and changes nothing.
    await second.get_by_role("button", name="Approve").click()
    await expect(second.locator("#outcome")).to_contain_text("already settled")
    third = await context.new_page()
    await third.goto(url)
    await expect(third.locator("#outcome")).to_contain_text("already settled")
    await expect(third.get_by_role("button", name="Approve")).to_have_count(0)

    rejected_id, rejected = await console.ask("Delete the production database?")
    page = await context.new_page()
    await page.goto(console.hs.callback_url(rejected_id, base_url=console.url))
    await page.get_by_role("button", name="Reject").click()
    await expect(page.get_by_label("Reason for rejecting")).to_be_focused()  # a reason is required
    await page.get_by_label("Reason for rejecting").fill("not during business hours")
    await page.get_by_role("button", name="Reject").click()
    await expect(page.locator("#outcome")).to_contain_text("Rejected")
    with pytest.raises(WorkflowFailureError) as failure:
        await rejected.result()
    cause = failure.value.cause.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.message, cause.type, cause.non_retryable) == ("not during business hours", "REJECTED", True)
    await context.close()


async def test_an_expired_or_forged_link_says_so_and_changes_nothing(console: Console) -> None:
    execution_id, _parent = await console.ask("Ship it?")
    expired = console.hs.callback_url(execution_id, base_url=console.url, ttl=0.5)
    body, signature = console.hs.callback_url(execution_id, base_url=console.url).rsplit(".", 1)
    forged = f"{body}.{'0' if signature[0] != '0' else '1'}{signature[1:]}"
    await asyncio.sleep(0.6)
    context = await console.browser.new_context()
    page = await context.new_page()
    await page.goto(expired)
    await expect(page.locator("#outcome")).to_contain_text("expired")
    await page.goto(forged)
    await expect(page.locator("#outcome")).to_contain_text("not valid")
    await expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    assert (await console.hs.inspect(execution_id)).phase == "PENDING"
    await context.close()


async def test_what_an_agent_wrote_shows_as_text(console: Console) -> None:
    execution_id = await console.hs.create(pb.AgentExecutionSpec(agent_id="a", message=XSS[0] + XSS[1]))
    await console.hs.claim("agent")
    status = pb.AgentExecutionStatus(
        messages=[pb.AgentMessage(type=pb.MessageType.MESSAGE_TYPE_AI, content=payload) for payload in XSS],
        tool_calls=[pb.ToolCall(name=XSS[1], result=XSS[0])],
        todos={"t1": pb.TodoItem(id="t1", content=XSS[1], status=pb.TodoStatus.TODO_STATUS_COMPLETED)},
    )
    await console.hs.update_status(execution_id, status)
    page = await console.page()
    await page.goto(f"{console.url}/#/execution/{execution_id}")
    await expect(page.locator("#status")).to_be_visible()
    main = page.locator("main")
    await expect(main).to_contain_text(XSS[0])
    await expect(main).to_contain_text(XSS[1])
    await expect(main).to_contain_text("Todos: 1 done of 1")
    assert await main.locator("img, script").count() == 0, "no element came from an agent's text"
    await page.goto(f"{console.url}/#/executions")
    await expect(page.locator("#executions")).to_be_visible()
    assert await page.evaluate("window.__xss") is None, "no payload ran"
    callback = await page.context.new_page()
    await callback.goto(console.hs.callback_url(execution_id, base_url=console.url))
    await expect(callback.locator("#ask")).to_have_text(XSS[0] + XSS[1])
    assert await callback.evaluate("window.__xss") is None


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A web server of another origin (another port), serving the files of a folder: an attacker's page."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    port = free_port()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", folder
    server.shutdown()
    server.server_close()


async def test_actions_need_the_settle_scope_the_csrf_token_and_the_same_origin(
    console: Console, elsewhere: tuple[str, Path]
) -> None:
    execution_id, parent = await console.ask("Refund order 9?")
    action = f"{console.url}/v1/executions/{execution_id}:complete"
    post = """async ([url, csrf]) => {
        const headers = {"content-type": "application/json"};
        if (csrf) headers["x-csrf-token"] = csrf;
        const r = await fetch(url, {method: "POST", headers, body: '{"by": "console"}'});
        return [r.status, await r.text()];
    }"""
    stranger = await console.page(None)
    await stranger.get_by_label("API key").fill("not-a-key-of-this-server")
    await stranger.get_by_role("button", name="Sign in").click()
    await expect(stranger.locator("#notice")).to_contain_text("the API key is not valid")
    assert (await stranger.evaluate("fetch('/console/session').then(r => r.json())")) == {"signed_in": False}
    viewer = await console.page("viewer")
    await viewer.goto(f"{console.url}/#/execution/{execution_id}")
    await expect(viewer.locator("#callback")).to_be_visible()
    await expect(viewer.locator("#actions")).to_have_count(0)  # read scope: nothing to click
    csrf = (await viewer.evaluate("fetch('/console/session').then(r => r.json())"))["csrf_token"]
    status, body = await viewer.evaluate(post, [action, csrf])
    assert (status, json.loads(body)["error"]["message"]) == (403, 'API key "viewer" lacks the "settle" scope')

    ops = await console.page("ops")
    status, body = await ops.evaluate(post, [action, None])
    refusal = json.loads(body)["error"]["message"]
    assert (status, refusal) == (403, "a console action needs the x-csrf-token header"), "the cookie is not enough"
    # A page elsewhere posts a form to the console while the person is signed in (same browser).
    (elsewhere[1] / "attack.html").write_text(
        f'<form method="POST" action="{action}" enctype="text/plain">'
        '<input name=\'{"by": "attacker", "x": "\' value=\'"}\'></form><script>document.forms[0].submit()</script>'
    )
    async with ops.expect_response(action) as refused:
        await ops.goto(f"{elsewhere[0]}/attack.html")
    assert (await refused.value).status == 403
    assert (await console.hs.inspect(execution_id)).phase == "PENDING", "no refusal changed anything"

    # The same person, from the console itself, with a confirmation step.
    await ops.goto(f"{console.url}/#/execution/{execution_id}")
    await ops.get_by_label("Result (JSON)").fill('{"refunded": true}')
    await ops.get_by_role("button", name="Complete…").click()
    await expect(ops.locator(".confirm")).to_contain_text('"refunded": true')
    await ops.get_by_role("button", name="Confirm: Complete").click()
    assert await parent.result() == {"refunded": True}
    await expect(ops.locator("#callback .badge")).to_have_text("delivered")


async def test_a_dead_lettered_callback_is_redelivered_from_its_page_once_the_parent_can_take_it(
    temporal_server: DevServer, temporal_client: Client, tmp_path: Path, browser: Browser
) -> None:
    # This handshake reaches Temporal through a gateway that checks an API key; the key is then revoked,
    # so the delivery is refused (Unauthenticated: permanent, dead-lettered) until a valid key is set.
    keys = [f"tk-{uuid.uuid4().hex[:20]}", f"tk-{uuid.uuid4().hex[:20]}"]  # short: nginx maps them
    SEEN_SECRETS.extend(k.encode() for k in keys)
    front = TlsFront(tmp_path / "front", temporal_server.address, keys)
    try:
        async with await Handshake.connect(
            store=sqlite_url(tmp_path),
            temporal=f"https://localhost:{front.key_port}",
            tls=TLSConfig(server_root_ca_cert=front.pki.read("ca.pem")),
            api_key=keys[0],
        ) as hs:
            server = await hs.serve(api_keys=list(KEYS.values()))
            task_queue = f"console-{uuid.uuid4()}"
            async with Worker(temporal_client, task_queue=task_queue, workflows=[AskParent],
                              activities=[AskActivities(hs).ask]):  # fmt: skip
                console = Console(hs, server.url, temporal_client, task_queue, browser)
                execution_id, parent = await console.ask("Summarise the quarter")
                hs.update_api_key("revoked")
                settled = await hs.succeed(execution_id, {"summary": "up 4%"})
                assert settled.outcome == "dead_lettered", settled
                page = await console.page()
                await page.goto(f"{console.url}/#/")
                await expect(page.locator("#troubled table")).to_contain_text(execution_id)
                await page.get_by_role("link", name=execution_id).click()
                await expect(page.locator("#callback .badge")).to_have_text("dead")
                await expect(page.locator("#callback")).to_contain_text("Unauthenticated")
                hs.update_api_key(keys[1])  # the operator fixes the key
                await page.get_by_role("button", name="Redeliver…").click()
                await page.get_by_role("button", name="Confirm: Redeliver the callback").click()
                await expect(page.locator("#notice")).to_contain_text("delivered")
                assert await parent.result() == {"summary": "up 4%"}
                await expect(page.locator("#callback .badge")).to_have_text("delivered")
                assert console.unexpected_errors() == []
    finally:
        front.close()


async def test_the_overview_and_an_execution_render_without_errors(console: Console) -> None:
    # Its activity declares a heartbeat timeout: the runner's pump heartbeats the progress within it.
    waiting, _ = await console.ask("Approve the release plan for 2.4?", heartbeat_timeout=5)
    done, parent = await console.ask("Label 40 support tickets")
    await console.hs.claim("agent", limit=2)
    drafted = "Drafted the plan; waiting for a person."
    await console.hs.update_status(waiting, pb.AgentExecutionStatus(
        messages=[pb.AgentMessage(type=pb.MessageType.MESSAGE_TYPE_AI, content=drafted)],
        todos={"a": pb.TodoItem(id="a", content="draft the plan", status=pb.TodoStatus.TODO_STATUS_COMPLETED),
               "b": pb.TodoItem(id="b", content="get approval", status=pb.TodoStatus.TODO_STATUS_IN_PROGRESS)},
    ))  # fmt: skip
    await console.hs.succeed(done, {"labelled": 40})
    await parent.result()
    # The pump heartbeats the progress: wait until the parent shows it, as the page will.
    waiting_parent = console.client.get_workflow_handle(f"parent-{waiting}")
    for _ in range(100):
        [pending] = (await waiting_parent.describe()).raw_description.pending_activities
        if pending.heartbeat_details.payloads:
            break
        await asyncio.sleep(0.1)
    page = await console.page(keyboard=True)
    await expect(page.locator("#waiting-title")).to_have_text("Callbacks waiting: 1")
    await expect(page.locator("#settles")).to_contain_text("(1 in all)")
    await expect(page.locator("#counts table")).to_contain_text("agent")
    shots = os.environ.get("CONSOLE_SCREENSHOTS")
    if shots:
        await page.screenshot(path=f"{shots}/console-overview.png", full_page=True)
    await page.goto(f"{console.url}/#/execution/{waiting}")
    await expect(page.locator("#status")).to_be_visible()
    await expect(page.locator("main")).to_contain_text("Todos: 1 done of 2")
    await expect(page.locator("#parent dl")).to_contain_text("STARTED")
    await expect(page.locator("#parent dl")).to_contain_text('"todos_done": 1')
    await expect(page.locator("#parent dl")).to_contain_text('"phase": "IN_PROGRESS"')  # as stored
    link = page.get_by_role("link", name=f"parent-{waiting}")
    assert (await link.get_attribute("href") or "").startswith("http://localhost:8233/namespaces/default/workflows/")
    await expect(page.locator("#callback")).to_contain_text("fingerprint")
    if shots:
        await page.screenshot(path=f"{shots}/console-execution.png", full_page=True)
    assert console.errors == []
