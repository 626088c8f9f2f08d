#!/usr/bin/env python3
"""Fail when the modules of src/ import each other in a circle.

Each file is a module (src/store/sql.rs is store::sql, src/store/mod.rs is store). A module depends on
another when its code names it: a `crate::` path (resolved to the longest module it names), a `super::`
path, or a child module's path (`sql::SqlStore` in store/mod.rs). Comments are left out; `mod` lines
only declare. Prints the graph's size, and each circle found.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
# Declared inline in lib.rs (generated code), a leaf: it names no other module.
INLINE = {"proto"}


def module_of(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return "::".join(parts)


def code_of(text: str) -> str:
    """The text without comments (line comments and doc comments)."""
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def paths_in(code: str, prefix: str) -> list[str]:
    """Every path after `prefix::`, with `prefix::{a, b::c}` groups opened one level."""
    found = []
    for match in re.finditer(rf"(?<![\w:]){prefix}::(\{{[^}}]*\}}|\w+(?:::\w+)*)", code):
        body = match.group(1)
        if body.startswith("{"):
            found += [item.strip().split(" as ")[0] for item in body[1:-1].split(",") if item.strip()]
        else:
            found.append(body)
    return found


def resolve(base: str, path: str, modules: set[str]) -> str:
    """The module that `path`, read from module `base`, names: its longest prefix that is a module (an
    item not in a module below `base` is in `base` itself)."""
    parts = [p for p in base.split("::") if p] + path.split("::")
    for n in range(len(parts), 0, -1):
        candidate = "::".join(parts[:n])
        if candidate in modules:
            return candidate
    return base


def graph() -> dict[str, set[str]]:
    files = {module_of(p): p for p in SRC.rglob("*.rs")}
    modules = set(files) | INLINE
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in files.items():
        code = code_of(path.read_text())
        parent = module.rpartition("::")[0]
        # In an inline module (`mod tests { ... }`, at a file's end) `super` is the file's module itself.
        outer, *inline = re.split(r"^\s*(?:pub(?:\([^)]*\))? )?mod \w+ \{", code, maxsplit=1, flags=re.M)
        named = [("", p) for p in paths_in(code, "crate")] + [(parent, p) for p in paths_in(outer, "super")]
        named += [(module, p) for part in inline for p in paths_in(part, "super")]
        for child in (m for m in modules if m != module and m.rpartition("::")[0] == module):
            name = child.rpartition("::")[2]
            named += [(module, f"{name}::{p}") for p in paths_in(code, name)]
        for base, target in named:
            found = resolve(base, target, modules)
            if found != module:
                edges[module].add(found)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def main() -> int:
    edges = graph()
    found = circles(edges)
    count = sum(len(targets) for targets in edges.values())
    print(f"src/: {len(edges)} modules, {count} imports between them, {len(found)} circles")
    for group in found:
        inside = {m: sorted(edges[m] & set(group)) for m in group}
        print("  circle: " + "; ".join(f"{m} -> {', '.join(t)}" for m, t in inside.items()))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
