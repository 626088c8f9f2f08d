"""Where Temporal is and how to reach it, resolved once at connect, in this order (first wins, per setting):

1. what `Handshake.connect` is given explicitly (`temporal=` URL, `namespace=`, `tls=`, `api_key=`,
   `rpc_metadata=`);
2. the temporalio `Client` given as `temporal=`: its target, namespace, TLS, API key, gRPC metadata and
   data converter (read from `client.service_client.config`, `client.namespace`, `client.api_key`,
   `client.rpc_metadata`, `client.data_converter`);
3. Temporal's environment configuration, as every SDK and the CLI read it (`TEMPORAL_ADDRESS`,
   `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS*`, `TEMPORAL_GRPC_META_*`, and the profile
   `TEMPORAL_PROFILE` of `TEMPORAL_CONFIG_FILE` or the default config file), via `temporalio.envconfig`;
4. the defaults: `http://127.0.0.1:7233`, namespace `default`, no TLS, no key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stigmer_handshake import _core

if TYPE_CHECKING:
    from temporalio.client import Client
    from temporalio.converter import DataConverter
    from temporalio.service import TLSConfig


class _FromEnvironment:
    """The `temporal=` default: Temporal's environment configuration, else `DEFAULT_TEMPORAL`."""

    def __repr__(self) -> str:
        return "FROM_ENVIRONMENT"


FROM_ENVIRONMENT: Any = _FromEnvironment()


@dataclass(frozen=True)
class TemporalConnection:
    #: A URL (`http://` or `https://`), or None for a store-only handshake.
    target: str | None
    namespaces: tuple[str, ...]
    tls: TLSConfig | None
    api_key: str | None
    rpc_metadata: tuple[tuple[str, str], ...]
    #: The Client's converter, when a Client was given.
    data_converter: DataConverter | None

    def __repr__(self) -> str:  # the API key and the client key never show
        return f"TemporalConnection(target={self.target!r}, namespaces={self.namespaces!r}, tls={self.tls is not None})"


def resolve(
    temporal: str | Client | None,
    *,
    namespace: str | Sequence[str] | None,
    tls: bool | TLSConfig | None,
    api_key: str | None,
    rpc_metadata: Mapping[str, str] | None,
) -> TemporalConnection:
    """The connection `Handshake.connect`'s arguments describe (see the module's docstring for the order)."""
    namespaces = None if namespace is None else ((namespace,) if isinstance(namespace, str) else tuple(namespace))
    if temporal is None:
        if tls is not None or api_key is not None or rpc_metadata is not None:
            raise _core.InvalidInput("tls, api_key and rpc_metadata need Temporal: temporal=None opens the store only")
        return TemporalConnection(None, namespaces or (_core.DEFAULT_NAMESPACE,), None, None, (), None)
    # Loaded only to reach Temporal: a store-only handshake (the CLI's list) never imports temporalio.
    from temporalio.client import Client
    from temporalio.envconfig import ClientConfig

    if isinstance(temporal, Client):
        config = temporal.service_client.config
        base: Mapping[str, Any] = {
            "target_host": config.target_host,
            "namespace": temporal.namespace,
            "tls": config.tls,
            "api_key": temporal.api_key,
            "rpc_metadata": temporal.rpc_metadata,
        }
        converter: DataConverter | None = temporal.data_converter
    else:
        try:
            base = dict(ClientConfig.load_client_connect_config())
        except Exception as err:  # a malformed config file or variable: say which, typed
            raise _core.InvalidInput(f"Temporal's environment configuration cannot be read: {err}") from err
        if temporal is not FROM_ENVIRONMENT:
            if "://" not in temporal:  # the core checks the rest of the URL
                # Not echoed: a malformed address may hold credentials.
                raise _core.InvalidInput("the Temporal address must be a URL like http://host:7233 (or https://)")
            base["target_host"] = temporal
        converter = None
    chosen_key = api_key if api_key is not None else base.get("api_key")
    metadata = dict(base.get("rpc_metadata") or {})
    metadata.update(rpc_metadata or {})
    target = str(base.get("target_host") or _core.DEFAULT_TEMPORAL)
    chosen_tls = _tls(tls if tls is not None else base.get("tls"), chosen_key, target)
    if "://" not in target:  # temporalio's form, host:port
        target = f"{'https' if chosen_tls is not None else 'http'}://{target}"
    return TemporalConnection(
        target=target,
        namespaces=namespaces or (str(base.get("namespace") or _core.DEFAULT_NAMESPACE),),
        tls=chosen_tls,
        api_key=chosen_key,
        rpc_metadata=tuple(_metadata(metadata)),
        data_converter=converter,
    )


def _tls(tls: bool | TLSConfig | None, api_key: str | None, target: str) -> TLSConfig | None:
    """temporalio's rule: `True` is TLS with the system's roots, `False` none; unset, TLS when there is an
    API key (or the URL is https://)."""
    from temporalio.service import TLSConfig

    if isinstance(tls, TLSConfig):
        if tls.verification_server_name is not None:
            raise _core.InvalidInput("tls.verification_server_name is not supported: set tls.domain instead")
        return tls
    if tls is True or (tls is None and (api_key is not None or target.startswith("https://"))):
        return TLSConfig()
    if tls is False and target.startswith("https://"):
        raise _core.InvalidInput("tls=False contradicts the https:// address")
    return None


def _metadata(metadata: Mapping[str, str | bytes]) -> list[tuple[str, str]]:
    pairs = []
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise _core.InvalidInput(f"rpc_metadata {key!r}: keys and values must be str (binary metadata is not sent)")
        pairs.append((key.lower(), value))  # header names are case-insensitive; gRPC sends them lowercase
    return pairs
