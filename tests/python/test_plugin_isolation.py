"""Installing the package never breaks an unrelated test suite: the built wheel, in a fresh virtualenv
without the `[testing]` extra (so without pytest-asyncio), leaves a plain pytest run passing, also under
`-W error`, with the plugin's entry point loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import TRANSCRIPT

ROOT = Path(__file__).resolve().parents[2]


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, cwd=cwd)
    TRANSCRIPT.extend([done.stdout, done.stderr])
    return done


def test_the_wheel_without_the_testing_extra_leaves_an_unrelated_suite_passing(tmp_path: Path) -> None:
    built = run(Path(sys.executable).parent / "maturin", "build", "--quiet", "--out", tmp_path / "wheel", cwd=ROOT)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    installed = run(venv / "bin" / "pip", "install", "--quiet", wheel, "pytest")
    assert installed.returncode == 0, installed.stderr
    python = venv / "bin" / "python"
    assert run(python, "-c", "import pytest_asyncio").returncode != 0, "the extra is not installed"
    entry_points = "import importlib.metadata as m; print([e.name for e in m.entry_points(group='pytest11')])"
    plugins = run(python, "-c", entry_points)
    assert "stigmer_handshake" in plugins.stdout, plugins.stdout

    suite = tmp_path / "unrelated"
    suite.mkdir()
    (suite / "test_unrelated.py").write_text("def test_arithmetic():\n    assert 1 + 1 == 2\n")
    for flags in ([], ["-W", "error"]):
        done = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *flags, cwd=suite)
        assert done.returncode == 0, (flags, done.stdout + done.stderr)
        assert "1 passed" in done.stdout
