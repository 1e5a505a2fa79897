#!/usr/bin/env bash
# mstack provisioning: install the project the way the README does, run the test suite, and
# run a demo that traces which stack every socket used (eBPF).
#
#   bash vagrant/provision.sh [SRC]        SRC: a checkout (default $MSTACK_SRC, else /vagrant)
#   SKIP_TESTS=1 bash vagrant/provision.sh   install and demo only (what tests/e2e runs)
#
# Runs as root on a plain Debian 12 host (the Vagrant box debian/bookworm64, or any host).
# Idempotent: `make install` is, and every namespace and process this script starts is
# removed on exit, also on failure or interruption. Network traffic stays on loopback inside
# the throwaway namespaces; only apt and PyPI are reached (by `make install`).
set -euo pipefail

SRC="${1:-${MSTACK_SRC:-/vagrant}}"
SKIP_TESTS="${SKIP_TESTS:-0}"
PREFIX_NS="mstack-prov-"
NS="${PREFIX_NS}$$"
PORT=8080
# where to install (make's PREFIX and BINDIR): the defaults, unless the caller says (make test
# passes its own on as MSTACK_PREFIX and MSTACK_BINDIR, so a second install is tested alone)
PREFIX="${MSTACK_PREFIX:-/opt/mstack}"
BINDIR="${MSTACK_BINDIR:-/usr/local/bin}"
PY="$PREFIX/bin/python"
server=""
tmp=""

log() { printf '==> provision: %s\n' "$*"; }
die() { printf 'provision: FAILED: %s\n' "$*" >&2; exit 1; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
    if [ -e "/run/netns/$NS" ]; then
        ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$NS" 2>/dev/null || true
    fi
    if [ -n "$tmp" ]; then rm -rf "$tmp"; fi
    if [ "$rc" -ne 0 ]; then echo "provision: FAILED (exit status $rc)" >&2; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

[ "$(id -u)" -eq 0 ] || die "must run as root (sudo bash $0)"
[ -f "$SRC/Makefile" ] && [ -d "$SRC/mstack_bpf" ] || die "$SRC is not an mstack checkout"
SRC="$(cd "$SRC" && pwd)"
export DEBIAN_FRONTEND=noninteractive
export PATH="$BINDIR:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"

log "host: $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r), $(nproc) CPUs"
log "source: $SRC"

# Leftovers of an earlier run that was killed (SIGKILL skips the trap): namespaces named after
# a pid that no longer runs (a zombie counts as gone: kill -0 would still find it).
alive() {
    local st
    st="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    st="${st##*) }"  # the fields after "(comm) "; the first is the state
    [ "${st%% *}" != Z ]
}
if command -v ip >/dev/null; then
    for stale in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        case "$stale" in
            "$PREFIX_NS"*|mstack-demo-*)
                pid="${stale##*-}"
                if [[ "$pid" =~ ^[0-9]+$ ]] && ! alive "$pid"; then
                    log "removing stale namespace $stale"
                    ip netns pids "$stale" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
                    ip netns del "$stale" 2>/dev/null || true
                fi ;;
        esac
    done
fi

# A plain Debian box has no make; everything else comes from `make install`.
if ! command -v make >/dev/null; then
    log "installing make"
    apt-get update -qq
    apt-get install -y -qq make >/dev/null
fi

log "make install"
make -C "$SRC" --no-print-directory install PREFIX="$PREFIX" BINDIR="$BINDIR"
mstack --version

if [ "$SKIP_TESTS" = "1" ]; then
    log "make test skipped (SKIP_TESTS=1)"
else
    log "make test"
    make -C "$SRC" --no-print-directory test PREFIX="$PREFIX" BINDIR="$BINDIR"
fi

log "make demo"
make -C "$SRC" --no-print-directory demo PREFIX="$PREFIX" BINDIR="$BINDIR"

# The traced demo: a server inside a throwaway stack, a client whose IP sockets come from it.
log "traced demo in throwaway stack $NS"
tmp="$(mktemp -d)"
ip netns add "$NS"
echo "provision: created namespace $NS"
ip -n "$NS" link set lo up
ip netns exec "$NS" "$PY" -m http.server --bind 127.0.0.1 "$PORT" \
    --directory "$tmp" >/dev/null 2>&1 &
server=$!
for _ in $(seq 100); do
    ip netns exec "$NS" curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
    sleep 0.1
done
ip netns exec "$NS" curl -s -o /dev/null "http://127.0.0.1:$PORT/" \
    || die "the server in $NS did not start"
if curl -s -m 2 -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null; then
    log "note: something on the host answers on 127.0.0.1:$PORT too (not ours)"
fi

URL="http://127.0.0.1:$PORT/"
printf '\n$ mstack -v -o ip %s curl -s -o /dev/null -w "HTTP %%{http_code}" %s\n' "$NS" "$URL"
# The command substitution reads until the supervisor, which prints the table when the
# command's tree has exited, closes its stderr too.
out="$(mstack -v -o ip "$NS" curl -s -o /dev/null -w 'HTTP %{http_code}\n' "$URL" 2>&1)" \
    || { printf '%s\n' "$out"; die "mstack -v -o ip $NS curl failed"; }
printf '%s\n' "$out"
grep -q '^HTTP 200$' <<<"$out" || die "curl under mstack did not reach the server in $NS"
awk -v ns="$NS" '$1 == "mstack:" && $2 == "ipv4" && $3 == ns && $4 + 0 >= 1 { ok = 1 }
                 END { exit !ok }' <<<"$out" \
    || die "no eBPF socket table row 'ipv4 $NS >=1' (is eBPF available? see the lines above)"

printf '\n$ mstack-trace --json -o trace.json -- mstack -o ip %s curl -s -o /dev/null %s\n' \
    "$NS" "$URL"
mstack-trace --json -o "$tmp/trace.json" -- mstack -o ip "$NS" curl -s -o /dev/null "$URL" \
    || die "mstack-trace failed"
"$PY" - "$tmp/trace.json" "$NS" <<'PY' || die "mstack-trace did not show curl's socket in $NS"
import json
import sys

path, ns = sys.argv[1:]
events = [json.loads(line) for line in open(path) if line.startswith("{")]
mine = [e for e in events if e["comm"] == "curl" and e["call"] == "socket"]
for e in mine:
    fd = e["fds"][0] if e["fds"] else e["errno"]
    print(f"  curl  pid {e['pid']:<7} socket  {e['family_name']:<8} {e['type_name']:<24}"
          f" fd {fd!s:<4} stack {e['stack']}")
if not any(e["family_name"] == "ipv4" and e["stack"] == ns for e in mine):
    sys.exit(1)
print(f"  ({len(events)} events in all; curl's ipv4 socket came from {ns})")
PY

echo
log "$(mstack --version)"
echo "provision: OK"
