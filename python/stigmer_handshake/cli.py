"""The `stigmer-handshake` command: look at and act on what is waiting.

Exit codes: 0 done; 1 an unexpected error; 2 bad arguments or input (nothing was changed); 3 no such
execution, or its phase does not allow it; 4 the store or Temporal cannot be reached (or refused us);
5 settled, but the parent activity was not told (it is gone, or the callback was dead-lettered).
`reconcile --every` keeps running through failed passes and exits 0 on SIGTERM or SIGINT; so does `serve`,
after the requests in flight finish.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import math
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stigmer_handshake import _core
from stigmer_handshake._temporal_config import FROM_ENVIRONMENT
from stigmer_handshake.handshake import DEFAULT_RETENTION, DEFAULT_STORE, DEFAULT_TEMPORAL, Handshake, short_age
from stigmer_handshake.server import API_KEYS_ENV, ApiKey

EXAMPLES = """\
examples:
  base64 -w0 token.bin | stigmer-handshake inspect-token -
  stigmer-handshake inspect-token --file token.bin --json
  stigmer-handshake --store sqlite:///handshake.db list --state armed
  stigmer-handshake --store postgres://app@db:5432/agents list --phase IN_PROGRESS --json
  stigmer-handshake show agent-3f2a
  stigmer-handshake settle agent-3f2a --result '{"answer": 42}'
  stigmer-handshake settle agent-3f2a --fail "model refused" --type REFUSED --non-retryable
  stigmer-handshake settle agent-3f2a --cancel
  stigmer-handshake reconcile                 (one pass)
  stigmer-handshake reconcile --every 5       (a long-running loop; it also prunes, see --retention)
  stigmer-handshake prune --older-than 7d     (delete what ended over a week ago)
  stigmer-handshake serve --listen 0.0.0.0:8080 --api-keys-file keys.txt --cert cert.pem --key key.pem
  stigmer-handshake serve --insecure-localhost   (127.0.0.1:8080, no keys: for development)
  stigmer-handshake demo --executions 60 --slots 4
  stigmer-handshake bench --only B1 B2

The store and Temporal come from --store/--temporal, else $STIGMER_HANDSHAKE_STORE and
$STIGMER_HANDSHAKE_TEMPORAL, else sqlite:stigmer-handshake.db (in the working directory) and Temporal's
environment configuration or http://127.0.0.1:7233.
"""

OK, FAILED, USAGE, NOT_FOUND, UNAVAILABLE, NOT_TOLD = 0, 1, 2, 3, 4, 5
#: TemporalRpcError codes that mean "cannot be reached" (exit 4), as temporalio's client retries them.
UNREACHABLE_CODES = ("Unavailable", "DeadlineExceeded")
#: A failing reconcile loop waits at most this long between passes.
MAX_LOOP_BACKOFF = 10.0


class UsageError(Exception):
    """Bad arguments found after parsing (exit 2, nothing changed)."""


def parser() -> argparse.ArgumentParser:
    # --json is taken before or after the command (SUPPRESS: a command's default must not undo the top's).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of text")
    top = argparse.ArgumentParser(
        prog="stigmer-handshake",
        description="Inspect and act on Temporal callback tokens held by stigmer-handshake.",
        epilog=(__doc__ or "").split("\n\n", 1)[-1] + "\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"stigmer-handshake {_core.__version__}")
    top.add_argument("--json", action="store_true", help="print JSON instead of text")
    top.add_argument("--verbose", action="store_true", help="say on stderr which store (and Temporal) it opened")
    top.add_argument("--store", default=os.environ.get("STIGMER_HANDSHAKE_STORE", DEFAULT_STORE), help="store URL")
    top.add_argument(
        "--temporal",
        default=os.environ.get("STIGMER_HANDSHAKE_TEMPORAL"),
        help=f"Temporal URL (else TEMPORAL_ADDRESS / Temporal's config profile, else {DEFAULT_TEMPORAL})",
    )
    top.add_argument("--namespace", help="Temporal namespace (else TEMPORAL_NAMESPACE, else default)")
    tls = top.add_argument_group("TLS and credentials for Temporal (else Temporal's environment configuration)")
    tls.add_argument("--tls-ca", metavar="PEM", help="CA certificate to check the server's against")
    tls.add_argument("--tls-cert", metavar="PEM", help="client certificate, for mTLS (with --tls-key)")
    tls.add_argument("--tls-key", metavar="PEM", help="client private key, for mTLS (with --tls-cert)")
    tls.add_argument("--tls-domain", metavar="NAME", help="name the server's certificate must have (and SNI)")
    tls.add_argument(
        "--api-key-file", metavar="FILE", help="file holding the API key (else $STIGMER_HANDSHAKE_TEMPORAL_API_KEY)"
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help, description=help, epilog=f"example:\n  {example}", parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip

    inspect = command(
        "inspect-token", "decode a task token (base64 or hex) and print its fields and fingerprint",
        'base64 -w0 token.bin | stigmer-handshake inspect-token -',
    )  # fmt: skip
    source = inspect.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "token", nargs="?",
        help="the token as base64 or hex; - reads it from standard input (prefer - or --file: an argument is "
        "visible to other users of the machine)",
    )  # fmt: skip
    source.add_argument("--file", type=Path, help="a file holding the token (raw bytes, base64 or hex)")

    listing = command("list", "list executions with their callback state and age", "stigmer-handshake list --json")
    listing.add_argument("--kind", choices=["agent", "workflow"])
    listing.add_argument("--phase", choices=["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"])
    listing.add_argument("--state", choices=["armed", "due", "delivering", "delivered", "gone", "dead", "none"])
    listing.add_argument("--text", help="only executions with this text in the id or the spec (case-sensitive)")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")

    show = command("show", "show one execution", "stigmer-handshake show agent-3f2a")
    show.add_argument("execution")

    settle = command(
        "settle", "end an execution and tell its parent activity",
        "stigmer-handshake settle agent-3f2a --result '{\"answer\": 42}'",
    )  # fmt: skip
    settle.add_argument("execution")
    how = settle.add_mutually_exclusive_group(required=True)
    how.add_argument("--result", metavar="JSON", help="complete with this JSON value")
    how.add_argument("--fail", metavar="MESSAGE", help="fail with this message")
    how.add_argument("--cancel", action="store_true", help="report cancellation")
    settle.add_argument("--type", default="", help="failure type (with --fail)")
    settle.add_argument("--non-retryable", action="store_true", help="the failure is final (with --fail)")
    settle.add_argument("--details", metavar="JSON", help="failure or cancellation details")
    settle.add_argument("--no-wait", action="store_true", help="return once recorded; deliver in the background")

    redeliver = command(
        "redeliver", "deliver a dead-lettered callback again, once what refused it is fixed",
        "stigmer-handshake redeliver agent-3f2a",
    )  # fmt: skip
    redeliver.add_argument("execution")

    reconcile = command(
        "reconcile", "deliver what is due and fail parents of closed children; once, or --every N seconds",
        "stigmer-handshake reconcile --every 5",
    )  # fmt: skip
    reconcile.add_argument("--every", type=float, metavar="SECONDS", help="keep running, a pass every SECONDS")
    retention_help = (
        "delete executions that ended longer ago than this, a batch per pass: 30d, 12h, 90m, 45s, or forever "
        "(default 30d)"
    )
    reconcile.add_argument("--retention", type=retention_arg, default=DEFAULT_RETENTION, help=retention_help)

    prune = command(
        "prune", "delete executions that ended long ago (their parent told or gone), in short batches",
        "stigmer-handshake prune --older-than 7d",
    )  # fmt: skip
    prune.add_argument(
        "--older-than", type=duration_arg, default=DEFAULT_RETENTION, metavar="AGE",
        help="30d, 12h, 90m or 45s (default 30d)",
    )  # fmt: skip

    serve = command(
        "serve", "serve the handshake over gRPC and HTTP/JSON on one port, until SIGTERM or SIGINT",
        "stigmer-handshake serve --listen 0.0.0.0:8080 --api-keys-file keys.txt --cert cert.pem --key key.pem",
    )  # fmt: skip
    serve.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="default 127.0.0.1:8080")
    serve.add_argument(
        "--api-keys-file", metavar="FILE",
        help=f"API keys, one per line: <name> <scope>[,<scope>...] <secret> (else ${API_KEYS_ENV})",
    )  # fmt: skip
    serve.add_argument("--insecure-localhost", action="store_true", help="serve without keys (loopback addresses only)")
    serve.add_argument("--cert", metavar="PEM", help="the server's TLS certificate chain (with --key)")
    serve.add_argument("--key", metavar="PEM", help="the server's TLS private key (with --cert)")
    serve.add_argument("--client-ca", metavar="PEM", help="demand client certificates signed by this CA")
    serve.add_argument("--public-url", metavar="URL", help="the base of callback URLs, behind a proxy")
    serve.add_argument(
        "--temporal-ui", metavar="URL", help="Temporal's Web UI, which the console links parent workflows to"
    )
    serve.add_argument(
        "--reconcile-every", type=float, default=5.0, metavar="SECONDS", help="reconciler interval (default 5)"
    )
    serve.add_argument("--retention", type=retention_arg, default=DEFAULT_RETENTION, help=retention_help)

    # demo's and bench's options are here rather than in their modules: those import temporalio, and every
    # command builds this parser.
    demo = command("demo", "fan out agent runs through a few slots on a dev server", "stigmer-handshake demo")
    demo.add_argument("--executions", type=int, default=60, help="agent runs the parent fans out")
    demo.add_argument("--slots", type=int, default=4, help="the worker's activity slots")

    bench = command("bench", "run the benchmarks beside their baselines", "stigmer-handshake bench")
    bench.add_argument("--b1-n", type=int, default=500)
    bench.add_argument("--b2-n", type=int, default=2000)
    bench.add_argument("--b3-n", type=int, default=200)
    bench.add_argument("--b5-n", type=int, default=10_000)
    bench.add_argument("--b5-hold", type=float, default=30.0)
    bench.add_argument("--b6-n", type=int, default=2000)
    bench.add_argument("--b6-one-by-one", type=int, default=200)
    bench.add_argument(
        "--b7-rows", type=int, nargs="+", default=[10_000, 1_000_000], help="B7's store sizes (ended executions)"
    )
    bench.add_argument("--out", default="bench-results.json", help="write the figures here as JSON ('' for none)")
    bench.add_argument(
        "--profile", metavar="DIR", help="sample B2's settling processes with perf (kept in DIR) and print B4's parts"
    )
    bench.add_argument("--no-postgres", dest="postgres", action="store_false", help="skip B2's PostgreSQL path")
    bench.add_argument("--only", nargs="*", choices=["B1", "B2", "B3", "B5", "B6", "B7"], help="run these figures only")
    return top


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_arg(text: str) -> float:
    """`30d`, `12h`, `90m`, `45s` or a number of seconds, as seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
    try:
        seconds = float(number) * DURATION_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (30d, 12h, 90m, 45s)") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration")
    return seconds


def retention_arg(text: str) -> float | None:
    """A duration, or `forever` (keep everything: None)."""
    return None if text == "forever" else duration_arg(text)


def temporal_credentials(args: argparse.Namespace) -> dict[str, Any]:
    """`Handshake.connect`'s tls= and api_key= from the TLS flags, the key file or its variable."""
    given: dict[str, Any] = {}

    def read(path: str | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as err:
            raise UsageError(f"{what} {path!r} cannot be read: {err.strerror}") from None

    if any((args.tls_ca, args.tls_cert, args.tls_key, args.tls_domain)):
        if (args.tls_cert is None) != (args.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together")
        from temporalio.service import TLSConfig  # loaded only by the commands that reach Temporal

        given["tls"] = TLSConfig(
            server_root_ca_cert=read(args.tls_ca, "--tls-ca"),
            domain=args.tls_domain,
            client_cert=read(args.tls_cert, "--tls-cert"),
            client_private_key=read(args.tls_key, "--tls-key"),
        )
    key_file = read(args.api_key_file, "--api-key-file")
    key = key_file.decode(errors="replace").strip() if key_file is not None else None
    key = key or os.environ.get("STIGMER_HANDSHAKE_TEMPORAL_API_KEY") or None
    if key is not None:
        given["api_key"] = key
    return given


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except UsageError as err:
        return fail(args, USAGE, "usage", str(err))
    except (_core.InvalidInput, _core.TokenError) as err:
        return fail(args, USAGE, type(err).__name__, str(err))
    except (_core.ExecutionNotFound, _core.InvalidState) as err:
        return fail(args, NOT_FOUND, type(err).__name__, str(err))
    except (_core.StoreUnavailable, _core.StoreAuthError, _core.SchemaMismatch, _core.ConnectError) as err:
        return fail(args, UNAVAILABLE, type(err).__name__, str(err))
    except _core.TemporalRpcError as err:  # Unavailable: Temporal went away during the call
        code = UNAVAILABLE if getattr(err, "code", "") in UNREACHABLE_CODES else FAILED
        return fail(args, code, type(err).__name__, str(err))
    except _core.HandshakeError as err:
        return fail(args, FAILED, type(err).__name__, str(err))
    except KeyboardInterrupt:
        return 130


def fail(args: argparse.Namespace, code: int, kind: str, message: str) -> int:
    if args.json:
        print(json.dumps({"error": kind, "message": message, "exit_code": code}))
    else:
        print(f"stigmer-handshake: {kind}: {message}", file=sys.stderr)
    return code


async def run(args: argparse.Namespace) -> int:
    if args.command == "inspect-token":
        return inspect_token(args)
    if args.command == "demo":
        from stigmer_handshake import demo

        await demo.main(args.executions, args.slots)
        return OK
    if args.command == "bench":
        from stigmer_handshake import bench

        await bench.main(args)
        return OK
    needs_temporal = args.command in ("settle", "redeliver", "reconcile", "serve")
    # Bad arguments are refused before anything is opened.
    if args.command == "settle":
        outcome_args(args)
    if args.command == "reconcile" and args.every is not None and not (math.isfinite(args.every) and args.every > 0):
        raise UsageError("--every must be a positive number of seconds")
    if args.command == "serve":
        keys = api_keys(args)
    hs = await Handshake.connect(
        store=args.store,
        temporal=(FROM_ENVIRONMENT if args.temporal is None else args.temporal) if needs_temporal else None,
        namespace=args.namespace,
        retention=getattr(args, "retention", DEFAULT_RETENTION),
        **(temporal_credentials(args) if needs_temporal else {}),
    )
    if args.verbose:
        where = f" and Temporal at {args.temporal or 'its environment configuration'}" if needs_temporal else ""
        print(f"stigmer-handshake: opened the store {without_password(args.store)}{where}", file=sys.stderr)
    if args.command == "list":
        return await list_executions(hs, args)
    if args.command == "show":
        emit(args, describe(await hs.inspect(args.execution)))
        return OK
    if args.command == "settle":
        return await settle(hs, args)
    if args.command == "redeliver":
        return settled(args, await hs.redeliver(args.execution))
    if args.command == "serve":
        return await serve(hs, args, keys)
    if args.command == "prune":
        return await prune(hs, args)
    return await reconcile(hs, args)


def without_password(url: str) -> str:
    """A store URL as it may be printed: a password in it is replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def api_keys(args: argparse.Namespace) -> list[ApiKey] | None:
    """The server's keys: from --api-keys-file, else the variable; None with --insecure-localhost."""
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    if not (math.isfinite(args.reconcile_every) and args.reconcile_every > 0):
        raise UsageError("--reconcile-every must be a positive number of seconds")
    if args.api_keys_file is not None:
        try:
            text = Path(args.api_keys_file).read_text()
        except OSError as err:
            raise UsageError(f"--api-keys-file {args.api_keys_file!r} cannot be read: {err.strerror}") from None
    else:
        text = os.environ.get(API_KEYS_ENV, "")
    if args.insecure_localhost:
        if text.strip():
            raise UsageError("--insecure-localhost serves without keys: give keys or it, not both")
        return None
    keys = ApiKey.parse(text)
    if not keys:
        raise UsageError(f"serving needs API keys (--api-keys-file or ${API_KEYS_ENV}), or --insecure-localhost")
    return keys


async def serve(hs: Handshake, args: argparse.Namespace, keys: list[ApiKey] | None) -> int:
    """Serve until SIGTERM or SIGINT, then stop accepting, let requests in flight finish, and exit 0."""
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    hs.start_reconciler(args.reconcile_every)
    server = await hs.serve(
        args.listen,
        api_keys=keys,
        insecure_localhost=args.insecure_localhost,
        tls_cert=args.cert,
        tls_key=args.key,
        tls_client_ca=args.client_ca,
        public_url=args.public_url,
        temporal_ui=args.temporal_ui,
    )
    emit(args, {"serving": server.url, "address": server.address, "console": f"{server.url}/"})
    sys.stdout.flush()
    await stop.wait()
    await hs.close()
    return OK


def read_token(args: argparse.Namespace) -> bytes:
    if args.file is not None:
        try:
            raw: bytes = args.file.read_bytes()
        except OSError as err:
            raise UsageError(f"cannot read {args.file}: {err.strerror}") from None
        try:
            return decode_text(raw.decode("ascii").strip())
        except (UnicodeDecodeError, UsageError):
            return raw  # the token's own bytes (TaskToken says if they are not a token)
    text = sys.stdin.read().strip() if args.token == "-" else args.token.strip()
    return decode_text(text)


def decode_text(text: str) -> bytes:
    """Hex if it is hex, else base64 (standard or URL-safe)."""
    if not text:
        raise UsageError("the token is empty")
    if len(text) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    try:
        padded = text + "=" * (-len(text) % 4)
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("the token is neither hex nor base64") from None


def inspect_token(args: argparse.Namespace) -> int:
    token = _core.TaskToken(read_token(args))
    emit(
        args,
        {
            "fingerprint": token.fingerprint,
            "activity": "standalone" if token.standalone else "workflow",
            "namespace_id": token.namespace_id,
            "workflow_id": token.workflow_id,
            "run_id": token.run_id,
            "workflow_type": token.workflow_type,
            "activity_id": token.activity_id,
            "activity_type": token.activity_type,
            "attempt": token.attempt,
            "scheduled_event_id": token.scheduled_event_id,
        },
    )
    return OK


def describe(e: _core.Execution) -> dict[str, Any]:
    now = time.time()
    return {
        "id": e.id,
        "kind": e.kind,
        "phase": e.phase,
        "callback_state": e.callback_state,
        "token_fingerprint": e.token_fingerprint,
        "parent_workflow_id": e.parent_workflow_id,
        "parent_run_id": e.parent_run_id,
        "parent_activity_id": e.parent_activity_id,
        "parent_attempt": e.parent_attempt,
        "outcome": e.outcome,
        "callback_outcome": e.callback_outcome,
        "gone_reason": e.gone_reason,
        "retry_of": e.retry_of,
        "delivery_attempts": e.delivery_attempts,
        "last_error": e.last_error,
        "age_seconds": round(now - e.created_at, 3),
        "idle_seconds": round(now - e.updated_at, 3),
    }


async def list_executions(hs: Handshake, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    records = await hs.list(args.kind, args.phase, args.limit, state=args.state, text=args.text)
    rows = [describe(r) for r in records]
    if args.json:
        print(json.dumps(rows, indent=2))
        return OK
    columns = ("id", "kind", "phase", "callback", "token", "age", "idle")
    table = [
        (r["id"], r["kind"], r["phase"], r["callback_state"] or "-", r["token_fingerprint"] or "-",
         short_age(r["age_seconds"]), short_age(r["idle_seconds"]))
        for r in rows
    ]  # fmt: skip
    widths = [max([len(c), *(len(row[i]) for row in table)]) for i, c in enumerate(columns)]
    for row in [columns, *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    states: dict[str, int] = {}
    for r in rows:
        states[r["callback_state"] or "none"] = states.get(r["callback_state"] or "none", 0) + 1
    print(f"\n{len(rows)} executions" + "".join(f", {n} {s}" for s, n in sorted(states.items())))
    return OK


def parse_json(text: str | None, option: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # bad JSON, an integer of too many digits, too deep
        raise UsageError(f"{option} is not valid JSON: {type(err).__name__}: {str(err)[:200]}") from None


def outcome_args(args: argparse.Namespace) -> tuple[Any, Any]:
    if (args.type or args.non_retryable) and args.fail is None:
        raise UsageError("--type and --non-retryable go with --fail")
    return parse_json(args.result, "--result"), parse_json(args.details, "--details")


async def settle(hs: Handshake, args: argparse.Namespace) -> int:
    result, details = outcome_args(args)
    wait = not args.no_wait
    if args.result is not None:
        settlement = await hs.succeed(args.execution, result, wait_for_delivery=wait)
    elif args.fail is not None:
        settlement = await hs.fail(
            args.execution, args.fail, type=args.type, non_retryable=args.non_retryable,
            details=() if details is None else (details,), wait_for_delivery=wait,
        )  # fmt: skip
    else:
        extra = () if details is None else (details,)
        settlement = await hs.cancel(args.execution, *extra, wait_for_delivery=wait)
    return settled(args, settlement)


def settled(args: argparse.Namespace, settlement: _core.Settlement) -> int:
    """Print a settlement; exit 5 when the parent was not told."""
    emit(
        args,
        {
            "execution_id": settlement.execution_id,
            "outcome": settlement.outcome,
            "reason": settlement.reason,
            "detail": settlement.detail,
        },
    )
    return NOT_TOLD if settlement.outcome in ("activity_gone", "dead_lettered") else OK


async def reconcile(hs: Handshake, args: argparse.Namespace) -> int:
    """One pass (its errors exit as usual), or with --every a loop that outlives failed passes (an outage:
    logged, then passes back off up to MAX_LOOP_BACKOFF) and stops on SIGTERM or SIGINT after its pass."""
    if args.every is None:
        emit(args, report_fields(await with_progress(hs, quiet=args.json)))
        return OK
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    pause = args.every
    while not stop.is_set():
        try:
            emit(args, report_fields(await with_progress(hs, quiet=args.json)))
            pause = args.every
        except _core.HandshakeError as err:
            pause = min(pause * 2, max(MAX_LOOP_BACKOFF, args.every))
            print(f"stigmer-handshake: reconcile pass failed ({type(err).__name__}: {err}); next pass in "
                  f"{pause:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        sys.stdout.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=pause)
    return OK


async def prune(hs: Handshake, args: argparse.Namespace) -> int:
    """Delete in batches; on a terminal (and not --json), the running count."""
    drawn = not args.json and sys.stderr.isatty()

    def show(total: int) -> None:
        print(f"\r  pruned {total}", end="", file=sys.stderr, flush=True)

    pruned = await hs.prune(args.older_than, progress=show if drawn else None)
    if drawn:
        print(file=sys.stderr)
    emit(args, {"pruned": pruned})
    return OK


def report_fields(report: _core.ReconcileReport) -> dict[str, Any]:
    return {
        "delivered": report.delivered,
        "gone": report.gone,
        "dead_lettered": report.dead_lettered,
        "retrying": report.retrying,
        "children_failed": report.children_failed,
        "orphaned": report.orphaned,
        "skipped": report.skipped,
        "pruned": report.pruned,
    }


async def with_progress(hs: Handshake, *, quiet: bool) -> _core.ReconcileReport:
    """One reconcile pass; on a terminal (and not --json), a bar of the due callbacks delivered so far.
    The store is read for the bar only when one is drawn."""
    if quiet or not sys.stderr.isatty():
        return await hs.reconcile()
    total = await hs.undelivered()
    task = asyncio.ensure_future(hs.reconcile())
    if total == 0:
        return await task
    while not task.done():
        done = max(total - await hs.undelivered(), 0)
        filled = 30 * done // total
        print(f"\r  delivering [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end="", file=sys.stderr)
        await asyncio.wait({task}, timeout=0.2)
    print(file=sys.stderr)
    return await task


def emit(args: argparse.Namespace, fields: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(fields, indent=2))
        return
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        if value is not None:
            print(f"{key.ljust(width)}  {value}")


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
