# Set-up and the project's main jobs. Run as root (sudo make ...): namespaces need it.
SHELL := /bin/bash
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
STAMP := $(VENV)/.installed
DP := $(VENV)/bin/dataplane
TOPOLOGY ?= topologies/flannel-vxlan.toml
# Debian packages: bcc for the system Python, the iproute2 oracle, ping for reachability, tshark for captures.
APT_PACKAGES := python3-bpfcc python3-venv python3-pip iproute2 iputils-ping tshark

.PHONY: setup verify test bench clean-run

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(wildcard dataplane/*.py)
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	test -x $(VENV)/bin/python || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check .
	touch $(STAMP)

# The main job on the default topology: build it, show it, ping every ordered pod pair, tear it down.
verify: setup
	@name=verify-$$$$; \
	$(DP) up $(TOPOLOGY) --name $$name || exit $$?; \
	trap '$(DP) down '$$name' >/dev/null' EXIT; \
	$(DP) status $$name && $(VENV)/bin/python -m tests.pingall $$name

test: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

bench: setup
	$(VENV)/bin/python bench/bench_up.py

clean-run: setup
	$(DP) clean
