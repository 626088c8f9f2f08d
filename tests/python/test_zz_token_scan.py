"""Runs last: everything the suite logged (every record, at DEBUG), printed, reported and read back from
its subprocesses holds none of the task tokens its caller activities saw: not as escaped bytes, nor as
hex or base64, nor any 16-character run of those."""

from __future__ import annotations

import base64
import re

import pytest

from conftest import TRANSCRIPT
from flows import SEEN_TOKENS

# Where a hex or base64 run could be: the characters of those alphabets, 16 or more in a row.
CANDIDATE = re.compile(r"[0-9A-Za-z+/=_-]{16,}")


def find_tokens(text: str, tokens: set[bytes]) -> list[str]:
    """Token forms found in `text` (their first characters only), in one pass over it."""
    runs: set[str] = set()
    escaped: dict[str, list[str]] = {}
    for token in tokens:
        for form in (token.hex(), token.hex().upper(), base64.b64encode(token).decode(),
                     base64.urlsafe_b64encode(token).decode()):  # fmt: skip
            runs.update(form[i : i + 16] for i in range(len(form) - 15))
        whole = repr(token)[2:-1]
        escaped.setdefault(whole[:16], []).append(whole)
    hits = []
    for match in CANDIDATE.finditer(text):
        candidate = match.group()
        hits += [candidate[i : i + 16] for i in range(len(candidate) - 15) if candidate[i : i + 16] in runs]
    for prefix, forms in escaped.items():
        position = text.find(prefix)
        while position != -1:
            hits += [form[:16] for form in forms if text.startswith(form, position)]
            position = text.find(prefix, position + 1)
    return hits


def test_the_scan_finds_what_it_looks_for() -> None:
    token = bytes(range(7, 90))
    planted = f"a log line with {base64.b64encode(token).decode()[20:40]} in it"
    assert find_tokens(planted, {token})
    assert find_tokens(f"x {repr(token)[2:-1]} y", {token})
    assert find_tokens(f"x{token.hex()[30:46].upper()}y", {token})
    assert not find_tokens(f"{token.hex()[:15]} and {base64.b64encode(token).decode()[:15]}", {token})


@pytest.mark.last
def test_nothing_the_suite_logged_printed_or_raised_holds_a_token() -> None:
    tokens = set(SEEN_TOKENS)
    if len(tokens) < 20:
        pytest.skip(f"only {len(tokens)} tokens seen: this scan runs after the whole suite")
    text = "\n".join(TRANSCRIPT)
    hits = find_tokens(text, tokens)
    print(f"\ntoken scan: {len(tokens)} tokens against {len(text):,} characters of logs and output: {len(hits)} hits")
    assert not hits, f"{len(hits)} token forms found, e.g. {hits[0][:8]}..."
