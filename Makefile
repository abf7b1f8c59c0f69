# slipguard: `make demo` runs the main job on the local stack; `make test` runs the tests.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv tools up down status cluster-up cluster-down topics demo test test-cluster test-unit check soak fuzz bench schemas docs docs-serve image pin-image clean

$(STAMP): pyproject.toml native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@# The native record path (Rust, PyO3): built where cargo is; elsewhere the Python core runs.
	@# Its build is kept in ~/.cache/slipguard/cargo-target: a clean checkout rebuilds only what changed.
	@if command -v cargo >/dev/null; then CARGO_TARGET_DIR=$${CARGO_TARGET_DIR:-$$HOME/.cache/slipguard/cargo-target} \
	  $(BIN)/pip install -q ./native; \
	else echo "venv: cargo not found: the join runs its Python core (install Rust, then make venv, for the native one)"; fi
	@touch $(STAMP)

venv: $(STAMP)

# What the tests need beyond Python (deploy/local/tools.sh): promtool, buildah, etcd (Debian);
# node modules (tests/js); kube-apiserver, compose-check and the CRDs, built once per machine
# into ~/.cache/slipguard (the first run builds kube-apiserver: about 10 minutes on two cores).
tools:
	bash deploy/local/tools.sh

up: venv
	bash deploy/local/stack.sh up

down:
	bash deploy/local/stack.sh down

status:
	bash deploy/local/stack.sh status

# The three-broker cluster behind Toxiproxy (tests/cluster); `make down` stops it too.
cluster-up:
	bash deploy/local/stack.sh cluster-up

cluster-down:
	bash deploy/local/stack.sh cluster-down

topics: up
	$(BIN)/slipguard topics create

demo: up
	$(BIN)/slipguard demo

# The whole suite: unit, property and integration tests on the real local stack, the join
# on its default core (native where built); then the tests that run join workers again on
# the Python core (SLIPGUARD_CORE=python), the reference and fallback. (The pure tests of
# the core already run both: tests/join/harness.py drives a native twin beside the Python one.)
PYTHON_CORE_TESTS := tests/integration/test_join.py tests/integration/test_hostile_inputs.py \
	tests/integration/test_fuzz_records.py tests/integration/test_join_restore.py tests/integration/test_dlq.py
#
# Last, the fault tests on the three-broker cluster (tests/cluster, marker `cluster`), in a
# run of their own with the cluster started for them and stopped after (about 8 minutes),
# with the Python core's run beside them (its output after theirs, from .stack/python-core.log):
# they share no broker, and the fault tests mostly wait on their faults (CI's time: issue 29).
test: up tools
	bash deploy/local/stack.sh kafka3-fetch
	$(BIN)/python -m pytest -m "not cluster" $(PYTEST_ARGS)
	@core=; if $(BIN)/python -c "import slipguard_native" 2>/dev/null; then \
	  echo "test: again on the Python core, beside the fault tests: $(PYTHON_CORE_TESTS)"; \
	  SLIPGUARD_CORE=python $(BIN)/python -m pytest $(PYTEST_ARGS:.stack/junit.xml=.stack/junit-python-core.xml) \
	    $(PYTHON_CORE_TESTS) >.stack/python-core.log 2>&1 & core=$$!; fi; \
	$(MAKE) --no-print-directory test-cluster PYTEST_ARGS="$(PYTEST_ARGS:.stack/junit.xml=.stack/junit-cluster.xml)"; \
	cluster=$$?; core_rc=0; \
	if [ -n "$$core" ]; then wait $$core; core_rc=$$?; echo "---- the Python core's run ----"; cat .stack/python-core.log; fi; \
	echo "test: fault tests exit $$cluster, Python core exit $$core_rc"; [ $$cluster -eq 0 ] && [ $$core_rc -eq 0 ]

# The fault tests alone: the cluster up, the tests, the cluster down (kept up when they fail,
# to look at; `make cluster-down` or `make down` stops it).
test-cluster: up tools
	bash deploy/local/stack.sh cluster-up
	$(BIN)/python -m pytest -m cluster $(PYTEST_ARGS) tests/cluster
	bash deploy/local/stack.sh cluster-down

# The soak (tests/cluster/soak.py): MINUTES of live traffic at RATE events/s on the
# three-broker cluster, join workers and writers leaving and coming back, and a fault every
# 2 minutes drawn from the fault tests' list (SEED: the schedule's and the traffic's; drawn
# and printed when empty); then the fault tests' invariants and each process's memory over
# time. Not in `make test` (half an hour); a run's figures are in docs/operating/cluster.md.
# Only PostgreSQL of the single-node stack is started (the soak adds a standby for the
# PostgreSQL failover, and removes it at the end); the cluster is stopped after a run that
# passes (kept up to look at otherwise).
MINUTES ?= 30
RATE    ?= 5000
SEED    ?=
# More of tests/cluster/soak.py's options, e.g. SOAK_ARGS='--every 60 --faults pg_failover,leader_kill'
SOAK_ARGS ?=
# The soak's own ports (tests/cluster/soak.py PORTS says why; test_soak.py holds the two
# equal): below Linux's ephemeral range (32768-60999), clear of stack.sh's defaults.
soak: export SLIPGUARD_CLUSTER_PORT ?= 31092
soak: export SLIPGUARD_CLUSTER_SET_PORT ?= 31112
soak: export SLIPGUARD_CLUSTER_LISTENER_PORT ?= 31142
soak: export SLIPGUARD_CLUSTER_INTERNAL_PORT ?= 31172
soak: export SLIPGUARD_CLUSTER_CONTROLLER_PORT ?= 31182
soak: export SLIPGUARD_TOXIPROXY_PORT ?= 31191
soak: export SLIPGUARD_PG_PORT ?= 31432
soak: export SLIPGUARD_PG_STANDBY_PORT ?= 31433
soak: venv
	bash deploy/local/stack.sh pg-up
	bash deploy/local/stack.sh cluster-up
	$(BIN)/python -m tests.cluster.soak --minutes $(MINUTES) --rate $(RATE) $(if $(SEED),--seed $(SEED)) $(SOAK_ARGS)
	bash deploy/local/stack.sh cluster-down

# The static checks of tests/test_static_checks.py (ruff, mypy) alone, in seconds: run them
# before a commit; in `make test` they come late, after most of half an hour.
check: venv
	$(BIN)/ruff check streams schemas tests
	$(BIN)/mypy

# Pure logic only; no broker or database needed.
test-unit: venv tools
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

# Long fuzzing of the record path (no broker): EXAMPLES cases of hostile records mixed into
# honest traffic through the join, and dead letters of anything. A failing case is kept in
# tests/join/fuzz_corpus/new-failure.json (rename it and commit it: every run replays it).
EXAMPLES ?= 3000
fuzz: venv
	SLIPGUARD_FUZZ_EXAMPLES=$(EXAMPLES) SLIPGUARD_FUZZ_KEEP=1 $(BIN)/python -m pytest -p no:cacheprovider -x \
		tests/join/test_fuzz.py tests/schemas/test_dlq_fuzz.py

# Mutation testing of the join's core modules and the fast decoder against the pure tests
# (mutmut, configured in pyproject.toml; about an hour on two cores), then each module's
# share of non-equivalent mutants detected (tests/mutation/score.py: 95 % or it fails).
mutation: venv
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2
	$(BIN)/python tests/mutation/score.py

# The container image (deploy/docker/Dockerfile), built here with buildah on a base made
# from Debian's packages; `docker build -f deploy/docker/Dockerfile .` elsewhere.
image: tools
	bash deploy/docker/image.sh localhost/slipguard:dev

# Pin the overlays (deploy/k8s) to the image just built, by the digest it has once pushed
# (to an OCI layout, as a registry stores it). A release pins the registry's digest instead:
# `python -m deploy.k8s.pin "$$(crane digest registry.example.com/slipguard:0.1.0)"`.
pin-image: image venv
	d=$$(mktemp -d) && buildah push --quiet --digestfile $$d/digest localhost/slipguard:dev oci:$$d/layout:0.1.0 \
	  && $(BIN)/python -m deploy.k8s.pin "$$(cat $$d/digest)"; rc=$$?; rm -rf $$d; exit $$rc

bench: up
	$(BIN)/slipguard bench

schemas: venv
	$(BIN)/python -m schemas.jsonschema

# The docs site (mkdocs.yml, docs/): the pages and pictures that come from the code written
# again (docs/generate.py), then built strictly into site/; docs-serve serves it while you edit.
docs: venv
	$(BIN)/python -m docs.generate
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: venv
	$(BIN)/python -m docs.generate
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict -a 127.0.0.1:8000

clean: down
	rm -rf .stack $(VENV) site
