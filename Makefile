# Two entry points (see README): `make run` and `make test`. Both set everything up first.
# `make check` is the fast lane (no root, no daemons: docs/testing.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APT_PACKAGES := iproute2 iputils-ping netcat-openbsd curl openssl bird2 etcd-server etcd-client \
                containernetworking-plugins nftables iptables ipset \
                gcc musl-tools containerd runc podman umoci mmdebstrap busybox-static

.PHONY: setup system-packages run run-ha test check lint bench bench-smoke clean plugin image

# The CNI plugin nodes run: one static C executable that needs nothing on the node
# (docs/cni.md says why C). setup builds it when a C compiler is there; `make plugin`
# insists (romana-cni install needs it).
PLUGIN     := src/romana/cni/bin/romana-cni-plugin
PLUGIN_CC  := $(firstword $(shell for cc in musl-gcc gcc; do command -v $$cc; done 2>/dev/null))
VERSION    := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' src/romana/__init__.py)

setup: $(STAMP)
	@if [ -n "$(PLUGIN_CC)" ]; then $(MAKE) --no-print-directory plugin; \
	else echo "no musl-gcc or gcc: the CNI plugin is not built (make system-packages plugin)"; fi

plugin: $(PLUGIN)

# -static, and no PT_INTERP: tests/test_cni_plugin.py checks the ELF headers.
$(PLUGIN): src/romana/cni/plugin.c src/romana/__init__.py
	@test -n "$(PLUGIN_CC)" || { echo "make plugin: needs musl-gcc or gcc (apt-get install musl-tools)"; exit 1; }
	@mkdir -p $(@D)
	$(PLUGIN_CC) -static -Os -s -std=c11 -Wall -Wextra -Werror \
	  -DROMANA_VERSION='"$(VERSION)"' -o $@.tmp $<
	mv $@.tmp $@

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests need; apt never starts services here, tests start them.
system-packages:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	else echo "skipping apt (not root or no apt-get): need $(APT_PACKAGES)"; fi

DATA_DIR ?= romana-data
LISTEN   ?= 127.0.0.1:9600

# The main job: romanad on the embedded store (SQLite in $(DATA_DIR)) with the example
# datacenter map; Ctrl-C (SIGINT) or SIGTERM stops it cleanly.
run: setup
	@$(BIN)/romana topology show examples/datacenter-4-racks.json
	@echo
	@echo "romanad: http://$(LISTEN)  data: $(DATA_DIR)/  (Ctrl-C to stop)"
	@echo "In another shell:"
	@echo "  export ROMANA_URL=http://$(LISTEN)"
	@echo "  $(BIN)/romana host add node-1 192.168.1.11 --label my-location-tag=rack-2"
	@echo "  $(BIN)/romana ip allocate pod-1 --host node-1 --tenant default"
	@echo "  $(BIN)/romana block list; $(BIN)/romana ip list; $(BIN)/romana --help"
	@echo "  $(BIN)/romana routes --host node-1; $(BIN)/romana routes --group /; $(BIN)/romana routes summary"
	@echo
	exec $(BIN)/romanad --listen $(LISTEN) --data-dir $(DATA_DIR) \
	  --topology examples/datacenter-4-racks.json

# Several replicas: a 3-member etcd cluster on loopback and 3 romanads on it (ports
# 9601-9603), data under $(DATA_DIR)/ha; Ctrl-C stops them all.
run-ha: setup system-packages
	BIN=$(BIN) DATA_DIR=$(DATA_DIR) scripts/run-ha.sh

# system-packages first: setup builds the CNI plugin with the compiler it installs.
test: system-packages setup plugin lint
	$(BIN)/pytest

# The fast lane: lint, then every test marked with none of root, daemons, bird, etcd,
# kubectl, image, bench (markers in pyproject.toml). No apt, no root; a skip fails it.
check: setup lint
	$(BIN)/python scripts/check_commits.py
	$(BIN)/pytest --check-lane

# ruff (lint rules and formatting) and mypy (strict, configured in pyproject.toml).
lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy

# Every script in benchmarks/ at a tiny size (tests/test_benchmarks.py): they still run
# and print their JSON. Most need root and start daemons, as `make bench` does.
bench-smoke: system-packages setup plugin
	$(BIN)/pytest -m bench

bench: setup
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/ipam_bench.py
	$(BIN)/python benchmarks/api_bench.py
	$(BIN)/python benchmarks/routes_bench.py --plot docs/routes-per-tor.png
	$(BIN)/python benchmarks/agent_bench.py
	$(BIN)/python benchmarks/cni_bench.py
	$(BIN)/python benchmarks/store_bench.py
	$(BIN)/python benchmarks/readers_bench.py
	$(BIN)/python benchmarks/topology_bench.py
	$(BIN)/python benchmarks/policy_bench.py
	$(BIN)/python benchmarks/conntrack_bench.py
	$(BIN)/python benchmarks/cni_startup_bench.py
	$(BIN)/python benchmarks/runtime_cni_bench.py
	$(BIN)/python benchmarks/agent_memory_bench.py

# The one OCI image (every process, ip, nft, BIRD) from Debian packages and PyPI, under
# build/image/ (tagged with the version; skipped when its inputs are unchanged): docs/image.md.
image: system-packages setup plugin
	$(BIN)/python scripts/build_image.py

clean:
	rm -rf $(DATA_DIR) $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
