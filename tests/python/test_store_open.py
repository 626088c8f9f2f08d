"""Opening a store: the default is a file in the working directory, and a store that cannot be opened says
where and why, at once."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stigmer_handshake import Handshake, StoreAuthError, StoreUnavailable


async def test_the_default_store_is_a_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with await Handshake.connect(temporal=None):
        pass
    assert (tmp_path / "stigmer-handshake.db").is_file()


async def test_a_store_that_cannot_be_opened_names_where_and_why_at_once(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "handshake.db"
    with pytest.raises(StoreUnavailable, match="no-such-folder") as raised:
        await Handshake.connect(store=f"sqlite://{missing}", temporal=None)
    assert "does its folder exist" in str(raised.value)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=re.escape("PostgreSQL at 127.0.0.1:1:")):
        await Handshake.connect(store="postgres://postgres@127.0.0.1:1/test", temporal=None)
    assert time.monotonic() - started < 5, "a refused connection is said at once, not after the pool's timeout"
    with pytest.raises(StoreAuthError, match=re.escape("PostgreSQL at 127.0.0.1:5432:")):
        await Handshake.connect(store="postgres://no_such_role_here@127.0.0.1:5432/test", temporal=None)


def test_the_cli_exits_4_naming_a_store_it_cannot_open(tmp_path: Path) -> None:
    cli = str(Path(sys.executable).parent / "stigmer-handshake")
    missing = tmp_path / "no-such-folder" / "handshake.db"
    done = subprocess.run([cli, "--store", f"sqlite://{missing}", "list"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 4 and str(missing) in done.stderr, done.stderr
