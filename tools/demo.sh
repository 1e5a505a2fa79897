#!/usr/bin/env bash
# make demo: the manual's examples against a throwaway stack. Traffic stays on loopback
# inside the stack. Everything it creates is removed on exit, also on failure.
set -euo pipefail
STACK="mstack-demo-$$"
PY="${MSTACK_PREFIX:-/opt/mstack}/bin/python"
PORT=8765
server=""

cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null || true
    ip netns pids "$STACK" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$STACK" 2>/dev/null || true
    rm -f "${WHERE:-}"
}
trap cleanup EXIT

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
show() { say "$*"; "$@" || echo "(exit status $?)"; }

# Which stack does each family's socket come from? Asked from inside the command.
WHERE=$(mktemp --suffix=.py)
cat >"$WHERE" <<'PY'
import socket, struct, sys
names = {int(k): v for k, v in (a.split("=") for a in sys.argv[1:])}
for fam, label in ((socket.AF_UNIX, "unix"), (socket.AF_INET, "ipv4"),
                   (socket.AF_INET6, "ipv6"), (socket.AF_NETLINK, "netlink")):
    kind = socket.SOCK_RAW if fam == socket.AF_NETLINK else socket.SOCK_DGRAM
    try:
        s = socket.socket(fam, kind)
    except OSError as e:
        print(f"  {label:8} {e.strerror}")
        continue
    cookie = struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, 71, 8))[0]
    print(f"  {label:8} {names.get(cookie, f'netns cookie {cookie}')}")
PY
cookie_in() { ip netns exec "$1" "$PY" -c 'import socket,struct;print(struct.unpack("=Q",socket.socket(socket.AF_UNIX).getsockopt(1,71,8))[0])'; }

echo "mstack demo — $(mstack --version)"
say "ip netns add $STACK   # a throwaway stack: loopback plus a veth pair, all inside"
ip netns add "$STACK"
ip -n "$STACK" link set lo up
ip -n "$STACK" link add demo0 type veth peer name demo1
STACK_COOKIE=$(cookie_in "$STACK")
HOST_COOKIE=$("$PY" -c 'import socket,struct;print(struct.unpack("=Q",socket.socket(socket.AF_UNIX).getsockopt(1,71,8))[0])')
MAP="$STACK_COOKIE=$STACK $HOST_COOKIE=native"

show ip -br link
show mstack -o ip "$STACK" ip -br link
show mstack null ip addr
for opts in "-o -unix $STACK" "-o +ip,-ipv6 $STACK" "-o 4,6 $STACK" "null"; do
    say "mstack $opts python3 where-do-my-sockets-go.py"
    # shellcheck disable=SC2086
    mstack $opts "$PY" "$WHERE" $MAP
done

say "mstack $STACK python3 -m http.server --bind 127.0.0.1 $PORT &   # a server inside the stack"
mstack "$STACK" "$PY" -m http.server --bind 127.0.0.1 "$PORT" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do
    ip netns exec "$STACK" curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
    sleep 0.1
done
show ip netns exec "$STACK" curl -s -o /dev/null -w "inside the stack: HTTP %{http_code}\n" "http://127.0.0.1:$PORT/"
show curl -s -m 2 -o /dev/null -w "from the host: HTTP %{http_code}\n" "http://127.0.0.1:$PORT/"
show mstack -o ip "$STACK" curl -s -o /dev/null -w "mstack client: HTTP %{http_code}\n" "http://127.0.0.1:$PORT/"
show mstack -o ip "$STACK" ss -tln
say "exec mstack -o all,-unix null bash   # in a shell: the same PID, no network (AF_UNIX stays)"
bash -c 'echo "  shell pid $$"; exec mstack -o all,-unix null bash -c "echo \"  after exec: pid \$\$\"; ip -br addr 2>&1 | sed \"s/^/  /\""'
say "mstack --lock -o ip null bash -c 'mstack -o ip $STACK true'   # a lock holds"
mstack --lock -o ip null bash -c "mstack -o ip $STACK true" || true
if mstack -v -o ip "$STACK" true 2>&1 | grep -q "SOCKETS"; then
    say "mstack -v -o ip $STACK curl ...   # which stack every socket used (eBPF)"
    mstack -v -o ip "$STACK" curl -s -o /dev/null "http://127.0.0.1:$PORT/" || true
fi
echo
echo "demo done; $STACK is removed on exit"
