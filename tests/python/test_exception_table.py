"""The exception classes are declared once, in the table of `src/py/errors.rs`: the compiled module holds
exactly those, and the stub `_core.pyi` and the package's imports and `__all__` must say the same (names
and bases). The Rust side (every `Error::type_name` is a class of the table) is checked by `cargo test`."""

from __future__ import annotations

import ast
from pathlib import Path

import stigmer_handshake
from stigmer_handshake import _core

STUB = Path(stigmer_handshake.__file__).parent / "_core.pyi"


def module_exceptions() -> dict[str, str]:
    """Class name -> base class name, of every exception class the compiled module registers."""
    return {
        name: cls.__bases__[0].__name__
        for name, cls in vars(_core).items()
        if isinstance(cls, type) and issubclass(cls, BaseException)
    }


def stub_exceptions(stub: str) -> dict[str, str]:
    """Class name -> base class name, of every class the stub derives from Exception (however deep)."""
    bases = {
        node.name: ast.unparse(node.bases[0])
        for node in ast.parse(stub).body
        if isinstance(node, ast.ClassDef) and node.bases
    }

    def is_exception(name: str) -> bool:
        return name == "Exception" or (name in bases and is_exception(bases[name]))

    return {name: base for name, base in bases.items() if is_exception(base)}


def stub_all(stub: str) -> list[str]:
    """The stub's `__all__`."""
    for node in ast.parse(stub).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def drift(stub: str, exported: list[str], package: dict[str, object]) -> list[str]:
    """How the stub and the package differ from the module's table (empty: they agree)."""
    table = module_exceptions()
    stubbed = stub_exceptions(stub)
    found = [f"stub: {n}({b}), module: {n}({table.get(n)})" for n, b in stubbed.items() if table.get(n) != b]
    found += [f"not in the stub: {n}({b})" for n, b in table.items() if n not in stubbed]
    found += [f"not in the stub's __all__: {n}" for n in table if n not in stub_all(stub)]
    found += [f"not in __all__: {n}" for n in table if n not in exported]
    found += [
        f"not the module's class: stigmer_handshake.{n}" for n in table if package.get(n) is not getattr(_core, n)
    ]
    return found


def test_the_module_the_stub_and_the_package_declare_the_same_exceptions() -> None:
    table = module_exceptions()
    assert "HandshakeError" in table and len(table) >= 17, table
    assert all(issubclass(getattr(_core, name), _core.HandshakeError) for name in table)
    assert drift(STUB.read_text(), stigmer_handshake.__all__, vars(stigmer_handshake)) == []


def test_the_drift_check_sees_each_kind_of_drift() -> None:
    stub = STUB.read_text()
    exported = list(stigmer_handshake.__all__)
    package = dict(vars(stigmer_handshake))
    assert drift(stub.replace("class WaitTimeout(HandshakeError): ...\n", ""), exported, package) == [
        "not in the stub: WaitTimeout(HandshakeError)"
    ]
    assert drift(stub.replace('    "WaitTimeout",\n', ""), exported, package) == [
        "not in the stub's __all__: WaitTimeout"
    ]
    rebased = stub.replace("class TokenKeyError(StoreError)", "class TokenKeyError(HandshakeError)")
    assert drift(rebased, exported, package) == [
        "stub: TokenKeyError(HandshakeError), module: TokenKeyError(StoreError)"
    ]
    assert drift(stub + "class Stale(StoreError): ...\n", exported, package) == [
        "stub: Stale(StoreError), module: Stale(None)"
    ]
    assert drift(stub, [n for n in exported if n != "ActivityGone"], package) == ["not in __all__: ActivityGone"]
    assert drift(stub, exported, {**package, "InvalidInput": ValueError}) == [
        "not the module's class: stigmer_handshake.InvalidInput"
    ]
