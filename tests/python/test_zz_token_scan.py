"""Runs last: everything the suite logged (every record, at DEBUG), printed, reported and read back from
its subprocesses holds none of the task tokens its caller activities saw: not as escaped bytes, nor as
hex or base64, nor any 16-character run of those. Nor does Temporal's own history of any workflow the
suite ran: the session's dev server is asked for every history, and the dev servers that tests ran on
their own left their databases in the session's temporary folder, which are read whole."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from temporalio.client import Client

from conftest import TRANSCRIPT
from flows import SEEN_TOKENS
from token_scan import SEEN_SECRETS, TokenFinder, find_tokens, history_bytes


def test_the_scan_finds_what_it_looks_for() -> None:
    token = bytes(range(7, 90))
    planted = f"a log line with {base64.b64encode(token).decode()[20:40]} in it"
    assert find_tokens(planted, {token})
    assert find_tokens(f"x {repr(token)[2:-1]} y", {token})
    assert find_tokens(f"x{token.hex()[30:46].upper()}y", {token})
    assert not find_tokens(f"{token.hex()[:15]} and {base64.b64encode(token).decode()[:15]}", {token})
    assert TokenFinder({token}).find(f"raw {token.decode('latin-1')} bytes", raw=True)
    # Inside a capability's hex body, a token would be found as what the body decodes to.
    body = b'{"e":"' + token + b'"}'
    inside = "shc1." + body.hex() + "." + "0" * 64
    assert TokenFinder({token}).find(inside, raw=True)
    assert not TokenFinder({token}).find(f"raw {token.decode('latin-1')[:-1]} bytes", raw=True)


@pytest.mark.last
def test_nothing_the_suite_logged_printed_or_raised_holds_a_token() -> None:
    tokens = set(SEEN_TOKENS)
    if len(tokens) < 20:
        pytest.skip(f"only {len(tokens)} tokens seen: this scan runs after the whole suite")
    text = "\n".join(TRANSCRIPT)
    hits = find_tokens(text, tokens)
    print(f"\ntoken scan: {len(tokens)} tokens against {len(text):,} characters of logs and output: {len(hits)} hits")
    assert not hits, f"{len(hits)} token forms found, e.g. {hits[0][:8]}..."
    # The API keys and private keys of the TLS tests, whole or in part, as they are or encoded.
    secrets = set(SEEN_SECRETS)
    leaked = find_tokens(text, secrets) + [s[:8] for s in secrets if s.decode("latin-1") in text]
    print(f"secret scan: {len(secrets)} keys: {len(leaked)} hits")
    assert not leaked, f"{len(leaked)} key forms found, e.g. {leaked[0][:8]!r}..."


@pytest.mark.last
async def test_no_workflow_history_the_suite_made_holds_a_token(
    temporal_client: Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tokens = set(SEEN_TOKENS)
    if len(tokens) < 20:
        pytest.skip(f"only {len(tokens)} tokens seen: this scan runs after the whole suite")
    sources: dict[str, str] = {}  # where each text came from: a workflow, or a dev server's database
    async for listed in temporal_client.list_workflows():
        if listed.workflow_type == "ForgedChild":
            continue  # carries, on purpose, a token forged from listed ids: it shares their bytes with the real one
        history = await temporal_client.get_workflow_handle(listed.id, run_id=listed.run_id).fetch_history()
        sources[f"workflow {listed.id} ({listed.workflow_type})"] = history_bytes(history).decode("latin-1")
    histories = len(sources)
    databases = sorted(Path(tmp_path_factory.getbasetemp()).rglob("temporal.db*"))
    sources.update({f"database {db}": db.read_bytes().decode("latin-1") for db in databases})
    finder = TokenFinder(tokens)
    found = {where: len(hits) for where, text in sources.items() if (hits := finder.find(text, raw=True))}
    size = sum(map(len, sources.values()))
    print(f"\nhistory scan: {len(tokens)} tokens against {histories} histories and {len(databases)} dev-server "
          f"databases ({size:,} bytes): {sum(found.values())} hits")  # fmt: skip
    assert histories >= 20, "the session's dev server ran the suite's workflows"
    assert not found, f"token forms found in {len(found)} places, e.g. {sorted(found.items())[:5]}"
