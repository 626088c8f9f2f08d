"""`Handshake.connect`'s settings cross into Rust as one frozen dataclass whose defaults are the core's."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from stigmer_handshake import Handshake, InvalidInput, _core
from stigmer_handshake._settings import ConnectSettings


def test_the_defaults_are_the_cores_written_once() -> None:
    settings = ConnectSettings()
    core = (_core.DEFAULT_STORE, _core.DEFAULT_TEMPORAL, (_core.DEFAULT_NAMESPACE,))
    assert (settings.store, settings.temporal, settings.namespaces) == core
    assert (settings.heartbeat_interval, settings.max_result_bytes) == (30.0, 2 * 1024 * 1024)
    assert (settings.heartbeat_interval, settings.max_result_bytes) == (
        _core.DEFAULT_HEARTBEAT_INTERVAL,
        _core.DEFAULT_MAX_RESULT_BYTES,
    )
    connect = inspect.signature(Handshake.connect).parameters
    for name in ("store", "heartbeat_interval", "max_result_bytes", "wait_for_temporal"):
        assert connect[name].default == getattr(settings, name), name


def test_settings_are_frozen_and_never_show_their_keys() -> None:
    settings = ConnectSettings(token_keys=(("k1", b"\x01" * 32),), capability_keys=(b"\x02" * 32,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.store = "sqlite::memory:"  # type: ignore[misc]
    assert "\\x01" not in repr(settings) and "\\x02" not in repr(settings) and "k1" not in repr(settings)


async def test_the_core_reads_every_field_and_refuses_bad_ones() -> None:
    base = ConnectSettings(store="sqlite::memory:", temporal=None)
    core = await _core.Core.connect(base)
    assert not core.temporal_connected()
    for bad, named in [
        (dataclasses.replace(base, heartbeat_interval=0.0), "heartbeat_interval"),
        (dataclasses.replace(base, max_result_bytes=-1), "max_result_bytes"),
        (dataclasses.replace(base, namespaces=()), "namespaces"),
        (dataclasses.replace(base, identity=""), "identity"),
        (dataclasses.replace(base, wait_for_temporal=float("nan")), "wait_for_temporal"),
        (dataclasses.replace(base, token_keys=(("k1", b"short"),)), "32"),
    ]:
        with pytest.raises(InvalidInput, match=named):
            await _core.Core.connect(bad)
