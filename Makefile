# Set-up and the project's main jobs. Run as root (sudo make ...): namespaces need it.
SHELL := /bin/bash
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
STAMP := $(VENV)/.installed
DP := $(VENV)/bin/dataplane
TOPOLOGY ?= topologies/flannel-vxlan.toml
# Debian packages: bcc for the system Python, the iproute2 oracle, ping for reachability,
# tshark for captures, bpftool as the BTF oracle, libnftables for the audit (nft as its
# oracle), fping for bench_verify's baseline, the CNI bridge, host-local and loopback plugins
# (/usr/lib/cni) for plugin-wired clusters.
APT_PACKAGES := python3-bpfcc python3-venv python3-pip iproute2 iputils-ping tshark bpftool \
  python3-nftables nftables fping containernetworking-plugins
# Without headers for the running kernel, bcc compiles against Debian's generic tree
# (common + arch merged) kept here; struct offsets never come from it, only from BTF.
HEADERS_CACHE := /var/cache/dataplane/kernel-headers

.PHONY: setup headers setup-vm vm-test verify test bench clean-run

# $(call ensure_packages,PACKAGE...): install those of the Debian packages that are missing.
define ensure_packages
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

setup: $(STAMP) headers
	@# Bytecode for our modules: with PYTHONDONTWRITEBYTECODE set (as on CI), every start
	@# would compile them again, a visible part of `dataplane up`. Up-to-date files are skipped.
	@$(VENV)/bin/python -m compileall -q dataplane

headers:
	@if [ ! -d /lib/modules/$$(uname -r)/build/include ] && [ ! -d $(HEADERS_CACHE)/include ]; then \
	  arch=$$(dpkg --print-architecture); \
	  echo "no headers for kernel $$(uname -r): preparing Debian's generic linux-headers-$$arch in $(HEADERS_CACHE)"; \
	  dpkg-query -W -f='$${Status}' linux-headers-$$arch 2>/dev/null | grep -q "ok installed" || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-headers-$$arch >/dev/null; } || exit 1; \
	  common=$$(ls -d /usr/src/linux-headers-*-common | sort -V | tail -n 1); \
	  rm -rf $(HEADERS_CACHE).tmp && mkdir -p $(HEADERS_CACHE).tmp && \
	  cp -a $$common/. $(HEADERS_CACHE).tmp/ && cp -a $${common%-common}-$$arch/. $(HEADERS_CACHE).tmp/ && \
	  mv $(HEADERS_CACHE).tmp $(HEADERS_CACHE); \
	fi

$(STAMP): pyproject.toml Makefile
	$(call ensure_packages,$(APT_PACKAGES))
	test -x $(VENV)/bin/python || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e . --config-settings editable_mode=compat
	touch $(STAMP)

# The main job on the default topology: build it, verify every ordered pod pair hop by hop
# (ICMP, UDP, TCP, ARP and DF probes around the MTU), tear it down.
verify: setup
	$(DP) verify $(TOPOLOGY)

test: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

# The VM lane: the kprobe backend for real, in Debian's stock kernels under QEMU, a guest per
# release (bullseye: Linux 5.10, bookworm: 6.1, trixie: 6.12), the verdicts compared.
KERNELS ?= bullseye bookworm trixie
setup-vm: setup
	$(call ensure_packages,qemu-system-x86 debootstrap busybox-static cpio e2fsprogs)

vm-test: setup-vm
	bash vm/run.sh $(KERNELS)

# Each benchmark prints its figures, then exits 1 if it missed a target: all of them run.
bench: setup
	@status=0; for b in up trace verify scale cni; do \
	  $(VENV)/bin/python bench/bench_$$b.py || status=1; \
	done; exit $$status

clean-run: setup
	$(DP) clean
