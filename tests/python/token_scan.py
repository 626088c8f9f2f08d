"""Finding task tokens in text: every form a token could be written in (escaped bytes, hex, base64),
whole or as any 16-character run of one."""

from __future__ import annotations

import base64
import re

from temporalio.client import WorkflowHistory

# Where a hex or base64 run could be: the characters of those alphabets, 16 or more in a row.
CANDIDATE = re.compile(r"[0-9A-Za-z+/=_-]{16,}")
# A settle capability: its body is hex-encoded JSON, read as the JSON it encodes (the hex of uuid-like
# ids in it would otherwise meet the hex of a token's own ids by chance, once thousands of tokens are seen).
CAPABILITY = re.compile(r"shc1\.([0-9a-f]+)\.[0-9a-f]{64}")


#: Other secrets the suite handles (API keys, private keys): the last scan looks for them too.
SEEN_SECRETS: list[bytes] = []


class TokenFinder:
    """Every form of `tokens` indexed once, then looked for in any number of texts: in one pass over each
    text for the encoded forms (escaped bytes, hex, base64, any 16-character run of those), and by a
    shared prefix for the raw bytes (found whole, as latin-1 text)."""

    RAW_PREFIX = 24

    def __init__(self, tokens: set[bytes]) -> None:
        self.runs: set[str] = set()
        self.escaped: dict[str, list[str]] = {}
        self.raw: dict[str, list[str]] = {}
        for token in tokens:
            for form in (token.hex(), token.hex().upper(), base64.b64encode(token).decode(),
                         base64.urlsafe_b64encode(token).decode()):  # fmt: skip
                self.runs.update(form[i : i + 16] for i in range(len(form) - 15))
            whole = repr(token)[2:-1]
            self.escaped.setdefault(whole[:16], []).append(whole)
            raw = token.decode("latin-1")
            self.raw.setdefault(raw[: self.RAW_PREFIX], []).append(raw)

    def find(self, text: str, *, raw: bool = False) -> list[str]:
        """Token forms found in `text` (their first characters only); with `raw`, whole raw tokens too."""
        text = CAPABILITY.sub(lambda m: bytes.fromhex(m.group(1)).decode("latin-1"), text)
        hits = []
        for match in CANDIDATE.finditer(text):
            candidate = match.group()
            hits += [candidate[i : i + 16] for i in range(len(candidate) - 15) if candidate[i : i + 16] in self.runs]
        for groups in (self.escaped, *((self.raw,) if raw else ())):
            for prefix, forms in groups.items():
                position = text.find(prefix)
                while position != -1:
                    hits += [repr(form[:16]) for form in forms if text.startswith(form, position)]
                    position = text.find(prefix, position + 1)
        return hits


def find_tokens(text: str, tokens: set[bytes]) -> list[str]:
    """Token forms found in `text` (their first characters only), in one pass over it."""
    return TokenFinder(tokens).find(text)


def history_bytes(history: WorkflowHistory) -> bytes:
    """A workflow's history as the server keeps it: its events, serialized."""
    return b"".join(event.SerializeToString() for event in history.events)
