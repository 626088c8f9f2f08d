"""Production Temporal: the whole handshake through a real TLS front (nginx with grpc_pass) that requires a
client certificate, or an API key; a temporalio Client handed to connect; each refusal typed and named at
connect; an API key rotated without reconnecting. No key appears in anything the suite logged."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.service import TLSConfig
from temporalio.worker import Worker

from stigmer_handshake import ActivityGone, ConnectError, Handshake, TemporalRpcError
from stigmer_handshake.testing import DevServer, sqlite_url

from conftest import TRANSCRIPT
from flows import AgentAnswer, AgentParent, AgentRequest, CallerActivities
from tls_front import TlsFront
from token_scan import SEEN_SECRETS

CLI = str(Path(sys.executable).parent / "stigmer-handshake")
KEYS = [f"key-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"]


@pytest.fixture(scope="module")
def front(temporal_server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFront]:
    upstream = temporal_server.url.split("://", 1)[1]
    front = TlsFront(tmp_path_factory.mktemp("tls-front"), upstream, KEYS)
    SEEN_SECRETS.extend([key.encode() for key in KEYS])
    SEEN_SECRETS.extend(front.pki.read(name) for name in ("client.key", "stranger.key", "server.key"))
    yield front
    front.close()


def mtls(front: TlsFront, **changes: object) -> TLSConfig:
    pki = front.pki
    config = {
        "server_root_ca_cert": pki.read("ca.pem"),
        "client_cert": pki.read("client.pem"),
        "client_private_key": pki.read("client.key"),
        **changes,
    }
    return TLSConfig(**config)  # type: ignore[arg-type]


@pytest_asyncio.fixture(loop_scope="session", params=["mtls", "api_key"])
async def secured(request: pytest.FixtureRequest, front: TlsFront) -> AsyncIterator[Client]:
    """A temporalio Client through the front, connected the way its parent worker is."""
    if request.param == "mtls":
        client = await Client.connect(f"localhost:{front.mtls_port}", tls=mtls(front))
    else:
        tls = TLSConfig(server_root_ca_cert=front.pki.read("ca.pem"))
        client = await Client.connect(f"localhost:{front.key_port}", tls=tls, api_key=KEYS[0])
    yield client


async def test_the_whole_handshake_through_the_front_with_the_users_client(secured: Client, tmp_path: Path) -> None:
    # The Client is all the handshake needs: target, namespace, TLS, API key and data converter.
    hs = await Handshake.connect(store=sqlite_url(tmp_path), temporal=secured)
    task_queue = f"tls-{uuid.uuid4()}"
    activities = CallerActivities(hs)
    async with Worker(secured, task_queue=task_queue, workflows=[AgentParent], activities=[activities.run_agent]):
        execution_id = f"agent-{uuid.uuid4()}"
        request = AgentRequest(execution_id, "through tls", heartbeat_timeout_seconds=2)
        parent = f"parent-{uuid.uuid4()}"
        handle = await secured.start_workflow(AgentParent.run, request, id=parent, task_queue=task_queue)
        deadline = time.monotonic() + 30
        while not (claimed := await hs.claim("agent")):
            assert time.monotonic() < deadline, "the caller never deferred"
            await asyncio.sleep(0.05)
        assert claimed[0].metadata.id == execution_id
        await asyncio.sleep(2.5)  # past the parent's heartbeat timeout: only the pump's heartbeats keep it
        assert hs._core.pump_stats()[1] >= 2, "the pump heartbeats the parent through the front"
        settlement = await hs.succeed(execution_id, {"answer": "ok", "tokens_used": 1, "sources": []})
        assert settlement.outcome == "delivered"
        assert await handle.result() == AgentAnswer("ok", 1, [])
        report = await hs.reconcile()
        assert report.delivered == 0 and report.children_failed == 0


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("wrong CA", "not signed by a trusted CA"),
        ("wrong domain", "not valid for the name"),
        ("no client certificate", "client certificate"),
        ("stranger's client certificate", "client certificate"),
        ("wrong API key", "API key"),
        ("no API key", "API key"),
    ],
)
async def test_each_refusal_fails_at_connect_typed_and_named(
    front: TlsFront, tmp_path: Path, case: str, named: str
) -> None:
    ca = front.pki.read("ca.pem")
    mtls_url, key_url = f"https://localhost:{front.mtls_port}", f"https://localhost:{front.key_port}"
    attempt = {
        "wrong CA": (mtls_url, mtls(front, server_root_ca_cert=front.pki.read("stranger-ca.pem")), None),
        "wrong domain": (mtls_url, mtls(front, domain="wrong.example"), None),
        "no client certificate": (mtls_url, TLSConfig(server_root_ca_cert=ca), None),
        "stranger's client certificate": (
            mtls_url,
            mtls(front, client_cert=front.pki.read("stranger.pem"), client_private_key=front.pki.read("stranger.key")),
            None,
        ),
        "wrong API key": (key_url, TLSConfig(server_root_ca_cert=ca), "not-the-key"),
        "no API key": (key_url, TLSConfig(server_root_ca_cert=ca), None),
    }[case]
    url, tls, api_key = attempt
    started = time.monotonic()
    with pytest.raises(ConnectError, match=named) as raised:
        await Handshake.connect(store=sqlite_url(tmp_path), temporal=url, tls=tls, api_key=api_key)
    assert time.monotonic() - started < 10, "refused at connect, not retried as an outage"
    assert "refused this client" in str(raised.value)


async def test_an_api_key_rotates_without_reconnecting(front: TlsFront, tmp_path: Path) -> None:
    hs = await Handshake.connect(
        store=sqlite_url(tmp_path),
        temporal=f"https://localhost:{front.key_port}",
        tls=TLSConfig(server_root_ca_cert=front.pki.read("ca.pem")),
        api_key=KEYS[0],
    )
    by_id = {"workflow_id": f"no-such-{uuid.uuid4()}", "activity_id": "1"}
    with pytest.raises(ActivityGone):  # through the front: the server itself answers
        await hs.heartbeat_activity(**by_id)
    hs.update_api_key("revoked")
    with pytest.raises(TemporalRpcError) as refused:
        await hs.heartbeat_activity(**by_id)
    assert refused.value.code == "Unauthenticated"  # type: ignore[attr-defined]
    hs.update_api_key(KEYS[1])
    with pytest.raises(ActivityGone):
        await hs.heartbeat_activity(**by_id)


async def test_rpc_metadata_is_sent_on_every_call(front: TlsFront, tmp_path: Path) -> None:
    url, tls = f"https://localhost:{front.metadata_port}", TLSConfig(server_root_ca_cert=front.pki.read("ca.pem"))
    # A header name in any case: sent lowercase, as gRPC wants.
    hs = await Handshake.connect(
        store=sqlite_url(tmp_path), temporal=url, tls=tls, rpc_metadata={"X-Test-Tenant": "acme"}
    )
    with pytest.raises(ActivityGone):
        await hs.heartbeat_activity(workflow_id=f"no-such-{uuid.uuid4()}", activity_id="1")
    with pytest.raises(ConnectError, match="lacks permission"):
        await Handshake.connect(store=sqlite_url(tmp_path), temporal=url, tls=tls)


async def test_environment_configuration_is_used_when_nothing_is_given(
    front: TlsFront, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"localhost:{front.key_port}")
    monkeypatch.setenv("TEMPORAL_API_KEY", KEYS[1])
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_CA_CERT_PATH", str(front.pki.folder / "ca.pem"))
    hs = await Handshake.connect(store=sqlite_url(tmp_path))
    with pytest.raises(ActivityGone):
        await hs.heartbeat_activity(workflow_id=f"no-such-{uuid.uuid4()}", activity_id="1")
    # An explicit setting wins over the environment's.
    with pytest.raises(ConnectError, match="API key"):
        await Handshake.connect(store=sqlite_url(tmp_path), api_key="not-the-key")


async def test_the_cli_reaches_temporal_through_the_front(front: TlsFront, tmp_path: Path) -> None:
    pki = front.pki.folder
    key_file = tmp_path / "api-key"
    key_file.write_text(KEYS[0] + "\n")
    runs = {
        "mtls": ["--temporal", f"https://localhost:{front.mtls_port}", "--tls-ca", f"{pki}/ca.pem",
                 "--tls-cert", f"{pki}/client.pem", "--tls-key", f"{pki}/client.key"],
        "api key": ["--temporal", f"https://localhost:{front.key_port}", "--tls-ca", f"{pki}/ca.pem",
                    "--api-key-file", str(key_file)],
        "no client certificate": ["--temporal", f"https://localhost:{front.mtls_port}", "--tls-ca", f"{pki}/ca.pem"],
    }  # fmt: skip
    codes = {}
    for name, flags in runs.items():
        command = [CLI, "--json", "--store", sqlite_url(tmp_path), *flags, "reconcile"]
        done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
        TRANSCRIPT.extend([done.stdout, done.stderr])
        codes[name] = done.returncode
        if name == "no client certificate":
            assert "client certificate" in done.stdout + done.stderr, done.stdout + done.stderr
    assert codes == {"mtls": 0, "api key": 0, "no client certificate": 4}, codes
