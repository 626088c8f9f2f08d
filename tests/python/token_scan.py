"""Finding task tokens in text: every form a token could be written in (escaped bytes, hex, base64),
whole or as any 16-character run of one."""

from __future__ import annotations

import base64
import re

from temporalio.client import WorkflowHistory

# Where a hex or base64 run could be: the characters of those alphabets, 16 or more in a row.
CANDIDATE = re.compile(r"[0-9A-Za-z+/=_-]{16,}")


#: Other secrets the suite handles (API keys, private keys): the last scan looks for them too.
SEEN_SECRETS: list[bytes] = []


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


def history_bytes(history: WorkflowHistory) -> bytes:
    """A workflow's history as the server keeps it: its events, serialized."""
    return b"".join(event.SerializeToString() for event in history.events)
