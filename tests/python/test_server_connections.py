"""`Handshake.serve` with TLS (certificate and key files) and with client certificates (mTLS), reached by a
grpcio secure channel and by Python's HTTPS client, with certificates made by the `openssl` command."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest

from stigmer_handshake import ApiKey, Handshake, InvalidInput, pb

from grpc_api import AGENT, GrpcApi, agent_pb
from tls_front import Pki, make_pki
from token_scan import SEEN_SECRETS

KEY = ApiKey("reader", "tls-reader-" + uuid.uuid4().hex, ("read",))
SEEN_SECRETS.append(KEY.secret.encode())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    made = make_pki(tmp_path_factory.mktemp("server-pki"))
    SEEN_SECRETS.extend(made.read(name) for name in ("server.key", "client.key", "stranger.key"))
    return made


def https_get(url: str, pki: Pki, client: str | None = None) -> tuple[int, object]:
    context = ssl.create_default_context(cafile=str(pki.folder / "ca.pem"))
    if client is not None:
        context.load_cert_chain(str(pki.folder / f"{client}.pem"), str(pki.folder / f"{client}.key"))
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {KEY.secret}"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def secure_api(address: str, pki: Pki, client: str | None = None) -> GrpcApi:
    api = GrpcApi(address, KEY.secret)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"),
        private_key=None if client is None else pki.read(f"{client}.key"),
        certificate_chain=None if client is None else pki.read(f"{client}.pem"),
    )
    api.channel = grpc.aio.secure_channel(address.replace("127.0.0.1", "localhost"), credentials)
    return api


async def test_tls_serves_grpc_and_https_and_refuses_plain_text(pki: Pki, tmp_path: Path) -> None:
    async with await Handshake.connect(store=f"sqlite:///{tmp_path}/tls.db", temporal=None) as hs:
        await hs.create(pb.AgentExecutionSpec(agent_id="a"), execution_id="e1")
        server = await hs.serve(
            "127.0.0.1:0", api_keys=[KEY], tls_cert=pki.folder / "server.pem", tls_key=pki.folder / "server.key"
        )
        assert server.url.startswith("https://")
        assert hs.callback_url("e1").startswith(f"{server.url}/v1/callbacks/")
        status, view = await asyncio.to_thread(https_get, f"{server.url}/v1/executions/e1", pki)
        assert (status, view["id"]) == (200, "e1")  # type: ignore[index]
        async with secure_api(server.address, pki) as api:
            got = await api.call(f"{AGENT}QueryController", "get", agent_pb.AgentExecutionId(value="e1"))
        assert got.metadata.id == "e1"
        # Plain HTTP to the TLS port: the server answers with a TLS alert, never with a page.
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            await asyncio.to_thread(urllib.request.urlopen, f"http://{server.address}/healthz", timeout=5)
        async with GrpcApi(server.address, KEY.secret) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await plain.call(f"{AGENT}QueryController", "get", agent_pb.AgentExecutionId(value="e1"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_certificates_are_demanded_when_a_client_ca_is_given(pki: Pki, tmp_path: Path) -> None:
    async with await Handshake.connect(store=f"sqlite:///{tmp_path}/mtls.db", temporal=None) as hs:
        await hs.create(pb.AgentExecutionSpec(agent_id="a"), execution_id="e1")
        server = await hs.serve(
            "127.0.0.1:0",
            api_keys=[KEY],
            tls_cert=pki.folder / "server.pem",
            tls_key=pki.folder / "server.key",
            tls_client_ca=pki.folder / "ca.pem",
        )
        status, _ = await asyncio.to_thread(https_get, f"{server.url}/v1/executions/e1", pki, "client")
        assert status == 200
        for client in (None, "stranger"):
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                await asyncio.to_thread(https_get, f"{server.url}/v1/executions/e1", pki, client)
        async with secure_api(server.address, pki, "client") as api:
            got = await api.call(f"{AGENT}QueryController", "get", agent_pb.AgentExecutionId(value="e1"))
            assert got.metadata.id == "e1"
        async with secure_api(server.address, pki, "stranger") as api:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await api.call(f"{AGENT}QueryController", "get", agent_pb.AgentExecutionId(value="e1"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_bad_tls_files_are_refused_before_anything_listens(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_text("")
    async with await Handshake.connect(store="sqlite::memory:", temporal=None) as hs:
        with pytest.raises(InvalidInput, match="no PEM certificate"):
            await hs.serve(api_keys=[KEY], tls_cert=tmp_path / "empty.pem", tls_key=pki.folder / "server.key")
        with pytest.raises(InvalidInput, match="key"):
            await hs.serve(api_keys=[KEY], tls_cert=pki.folder / "server.pem", tls_key=pki.folder / "server.pem")
        with pytest.raises(InvalidInput, match="certificate and key"):
            await hs.serve(api_keys=[KEY], tls_cert=pki.folder / "server.pem", tls_key=pki.folder / "client.key")
        with pytest.raises(InvalidInput, match="tls_cert and tls_key"):
            await hs.serve(api_keys=[KEY], tls_cert=pki.folder / "server.pem")


async def test_silent_and_slow_clients_are_cut_off_and_do_not_pin_the_server(tmp_path: Path) -> None:
    async with await Handshake.connect(store=f"sqlite:///{tmp_path}/slow.db", temporal=None) as hs:
        server = await hs.serve("127.0.0.1:0", api_keys=[KEY])
        host, port = server.address.rsplit(":", 1)
        silent = [await asyncio.open_connection(host, int(port)) for _ in range(20)]  # connect, say nothing
        slow = await asyncio.open_connection(host, int(port))
        slow[1].write(b"GET /v1/executions HTTP/1.1\r\nhost: x\r\n")  # and never the rest of the headers
        await slow[1].drain()
        started = asyncio.get_running_loop().time()

        def health() -> int:
            with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
                return int(response.status)

        assert await asyncio.to_thread(health) == 200, "everyone else is served meanwhile"
        for reader, writer in [*silent, slow]:
            # The server closes each (a read that never ends fails here with TimeoutError).
            ended = await asyncio.wait_for(reader.read(), 20)
            assert ended == b"" or ended.startswith(b"HTTP/1.1 408"), ended[:100]
            writer.close()
        elapsed = asyncio.get_running_loop().time() - started
        assert elapsed < 15, f"closed only after {elapsed:.1f} s"
