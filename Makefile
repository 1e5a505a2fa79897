# mstack — quick start on a fresh Debian 12 host, as root:
#   make demo    install everything, make a throwaway stack, run the manual's examples
#   make test    install everything the tests need and run the whole suite
PREFIX   ?= /opt/mstack
PY       := $(PREFIX)/bin/python
BINDIR   ?= /usr/local/bin
MANDIR   ?= /usr/local/share/man/man1
MAN5DIR  ?= /usr/local/share/man/man5
MAN8DIR  ?= $(patsubst %/man1,%/man8,$(MANDIR))
SHAREDIR ?= /usr/local/share/mstack
INCDIR   ?= /usr/local/include
#: mstack-agent.service (deploy/systemd/), with ExecStart in BINDIR; inert until enabled
SYSTEMDDIR ?= /usr/local/lib/systemd/system
APT_PKGS := python3-venv python3-dev gcc libc6-dev make clang llvm libbpf-dev bpftool \
            iproute2 iputils-ping iperf3 curl passt slirp4netns nftables procps psmisc util-linux
#: only what tests/e2e/test_agent*.py run (mstack-agent with real containers): kept out of
#: the base install, installed by `make test`
APT_CONTAINER_PKGS := podman crun runc containerd busybox-static
PYTEST_ARGS ?=

.PHONY: all deps deps-containers venv build install demo test lint unit bench clean vm-box vm-test vm-clean

all: install

deps:
	@dpkg -s $(APT_PKGS) >/dev/null 2>&1 || { \
	  echo "installing system packages: $(APT_PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null; }

deps-containers:
	@dpkg -s $(APT_CONTAINER_PKGS) >/dev/null 2>&1 || { \
	  echo "installing system packages: $(APT_CONTAINER_PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_CONTAINER_PKGS) >/dev/null; }

venv: deps
	@test -x $(PY) || /usr/bin/python3 -m venv $(PREFIX)

build: venv
	@if [ -f bpf/Makefile ]; then $(MAKE) -s -C bpf; fi
	@# the compiled module also next to its sources: the tests import the tree, not the install
	@mkdir -p build && $(PY) setup.py -q build_ext --inplace >build/ext.log 2>&1 || \
	  { cat build/ext.log >&2; echo "building the C modules of mstack_bpf/linux failed" >&2; exit 1; }

install: venv build
	@$(PREFIX)/bin/pip install -q --disable-pip-version-check '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
	@cd / && $(PY) -c 'import mstack_bpf.linux._colocate, mstack_bpf.linux._fastpath, mstack_bpf.linux._visit' || { echo "install failed" >&2; exit 1; }
	@for cmd in mstack mstack-trace mstack-stack mstack-agent; do \
	  if [ -x $(PREFIX)/bin/$$cmd ]; then ln -sf $(PREFIX)/bin/$$cmd $(BINDIR)/$$cmd; fi; done
	@mkdir -p $(MANDIR) $(MAN5DIR) $(MAN8DIR) $(INCDIR) $(SHAREDIR)/policy
	@for page in man/*.1; do install -m 644 $$page $(MANDIR)/; done
	@for page in man/*.5; do install -m 644 $$page $(MAN5DIR)/; done
	@for page in man/*.8; do if [ -f $$page ]; then install -m 644 $$page $(MAN8DIR)/; fi; done
	@install -m 644 policy/*.toml policy/README.md $(SHAREDIR)/policy/
	@if [ -f include/msocket.h ]; then install -m 644 include/msocket.h $(INCDIR)/; fi
	@mkdir -p $(SYSTEMDDIR) && sed 's|/usr/local/bin/|$(BINDIR)/|' deploy/systemd/mstack-agent.service \
	  >$(SYSTEMDDIR)/mstack-agent.service && chmod 644 $(SYSTEMDDIR)/mstack-agent.service
	@echo "mstack installed: $$($(BINDIR)/mstack --version)"
	@found=$$(command -v mstack); [ "$$found" = "$(BINDIR)/mstack" ] || \
	  echo "warning: 'mstack' on PATH is $$found, not $(BINDIR)/mstack (View-OS' umview ships /usr/bin/mstack): put $(BINDIR) first in PATH" >&2

lint: install
	$(PY) -m ruff check mstack_bpf tests bench
	$(PY) -m mypy

unit: install
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test: install lint deps-containers
	MSTACK_PREFIX=$(PREFIX) MSTACK_BINDIR=$(BINDIR) PATH="$(BINDIR):/usr/sbin:/sbin:$$PATH" $(PY) -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)

demo: install
	MSTACK_PREFIX=$(PREFIX) MSTACK_BINDIR=$(BINDIR) PATH="$(BINDIR):/usr/sbin:/sbin:$$PATH" bash tools/demo.sh

bench: install
	@dpkg -s umview >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq umview >/dev/null
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(PREFIX)/bin/pip install -q matplotlib
	MSTACK_PREFIX=$(PREFIX) MSTACK_BINDIR=$(BINDIR) PATH="$(BINDIR):/usr/sbin:/sbin:$$PATH" $(PY) bench/run.py

# The Debian 12 test VM (vagrant/README.md): not part of `make test`. FLAVOUR=backports:
# bookworm-backports' kernel instead of Debian 12's own.
MSTACK_VM_CACHE ?= /var/cache/mstack-vm
export MSTACK_VM_CACHE
FLAVOUR ?= stock

vm-box:
	MSTACK_VM_FLAVOUR=$(FLAVOUR) vagrant/build-box

vm-test:
	MSTACK_VM_FLAVOUR=$(FLAVOUR) PYTEST_ARGS='$(PYTEST_ARGS)' vagrant/vm-test

vm-clean:
	rm -rf $(MSTACK_VM_CACHE)

clean:
	rm -rf build *.egg-info tests/bin mstack_bpf/linux/*.so
	@if [ -f bpf/Makefile ]; then $(MAKE) -s -C bpf clean; fi
