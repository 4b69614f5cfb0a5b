# Two entry points (see README): `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APT_PACKAGES := iproute2 iputils-ping netcat-openbsd bird2 etcd-server etcd-client \
                containernetworking-plugins nftables iptables ipset

.PHONY: setup system-packages run test lint bench clean

setup: $(STAMP)

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

run: setup
	$(BIN)/romana topology validate examples/datacenter-4-racks.json
	$(BIN)/romana topology show examples/datacenter-4-racks.json

test: setup system-packages
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/ipam_bench.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
