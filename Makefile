# One task runner. `make demo` and `make test` do all their own set-up on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install dev protos demo test test-rust test-python lint bench fuzz clean system-packages typescript-caller wheels wheel-check

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
	$(VENV)/bin/stigmer-handshake demo

# Benchmarks measure the build we ship (`make dev` or `make test` put the debug one back).
bench: $(STAMP)
	$(VENV)/bin/maturin develop --profile dist --quiet
	$(VENV)/bin/stigmer-handshake bench --out bench-results.json

# Fuzz each target for FUZZ_SECONDS (default 5 minutes) on the corpus kept in fuzz/corpus; prints the
# executions and crashes of each. cargo-fuzz drives libFuzzer, whose flags need RUSTC_BOOTSTRAP on stable.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS := token_decode proto_decode
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -O
	@for t in $(FUZZ_TARGETS); do \
	  cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) \
	    -print_final_stats=1 > ../target/fuzz-$$t.log 2>&1; status=$$?; cd ..; \
	  runs=$$(grep -o 'stat::number_of_executed_units: *[0-9]*' target/fuzz-$$t.log | grep -o '[0-9]*$$'); \
	  crashes=$$(ls fuzz/artifacts/$$t 2>/dev/null | wc -l); \
	  echo "$$t: $${runs:-0} executions in $(FUZZ_SECONDS) s, $$crashes crashes (log: target/fuzz-$$t.log)"; \
	  test $$status -eq 0 && test $$crashes -eq 0 || exit 1; \
	done

# Release artefacts in dist/: an abi3 wheel for manylinux2014 x86_64 (zig links it against glibc 2.17, so
# RHEL 8, Debian 11 and Ubuntu 20.04 get it too), checked by auditwheel, and the sdist.
WHEEL_TOOLS := $(VENV)/.wheel-tools
$(WHEEL_TOOLS): requirements-wheels.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements-wheels.txt
	touch $@

wheels: $(WHEEL_TOOLS)
	rm -rf dist
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/maturin build --profile dist --zig --compatibility manylinux2014 --out dist
	$(VENV)/bin/maturin sdist --out dist
	$(VENV)/bin/auditwheel show dist/*.whl

# The wheel in a fresh virtualenv without Rust on PATH: import, a store round trip, the demo.
wheel-check:
	scripts/wheel_check.sh $(firstword $(wildcard dist/*.whl))

lint: dev
	cargo fmt --check
	cargo clippy --all-targets --locked -- -D warnings
	$(VENV)/bin/ruff check python tests examples scripts
	$(VENV)/bin/ruff format --check python tests examples scripts
	$(VENV)/bin/mypy python/stigmer_handshake
	$(PY) -m mypy.stubtest stigmer_handshake._core
	$(PY) scripts/gen_protos.py --check
	$(PY) scripts/check_imports.py

test-rust:
	cargo test --locked

# Debian packages the tests drive: nginx (the TLS front of the Temporal TLS tests), openssl (their
# certificates) and Chromium (the console's browser tests, driven by Playwright). Installed only when missing.
system-packages:
	@missing=""; \
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The TypeScript caller (a real Temporal TypeScript worker) the network tests run: its npm packages, as the
# lock file pins them, and its compiled JavaScript.
TS_CALLER := examples/typescript-caller
$(TS_CALLER)/lib/main.js: $(TS_CALLER)/package-lock.json $(TS_CALLER)/tsconfig.json $(wildcard $(TS_CALLER)/src/*.ts)
	cd $(TS_CALLER) && npm ci --no-audit --no-fund --loglevel=error && npx tsc --build
typescript-caller: $(TS_CALLER)/lib/main.js

test-python: dev system-packages typescript-caller
	$(PY) -m pytest

test: lint test-rust test-python

clean:
	rm -rf $(VENV) target $(TS_CALLER)/node_modules $(TS_CALLER)/lib
