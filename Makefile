# One task runner. `make demo` and `make test` do all their own set-up on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install dev protos demo test test-rust test-python lint bench clean

# The virtualenv with pinned tools; redone when requirements-dev.txt changes.
$(STAMP): requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

# Build the Rust core (debug: fast to build, plenty fast to run) into the virtualenv.
dev: $(STAMP)
	$(VENV)/bin/maturin develop --quiet

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

demo: dev
	$(PY) examples/demo.py

# Benchmarks measure the optimised build (`make dev` or `make test` put the debug one back).
bench: $(STAMP)
	$(VENV)/bin/maturin develop --release --quiet
	$(PY) benchmarks/bench.py --json bench-results.json

lint: dev
	cargo fmt --check
	cargo clippy --all-targets --locked -- -D warnings
	$(VENV)/bin/ruff check python tests examples scripts benchmarks
	$(VENV)/bin/ruff format --check python tests examples scripts benchmarks
	$(VENV)/bin/mypy python/stigmer_handshake
	$(PY) -m mypy.stubtest stigmer_handshake._core
	$(PY) scripts/gen_protos.py --check

test-rust:
	cargo test --locked

test-python: dev
	$(PY) -m pytest

test: lint test-rust test-python

clean:
	rm -rf $(VENV) target
