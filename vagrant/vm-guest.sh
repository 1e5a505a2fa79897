#!/bin/bash
# vm-test's job inside the VM (run by the guest's mstack-vm-run.service from the 9p share
# mstack-run, where vm-test put it): copy the source tree from the read-only share
# mstack-src, `make install`, `make test`, provision.sh's traced demo; the log and the exit
# status go to the share, then the guest powers off.
set -u
OUT=/mnt/mstack-run
SRC=/mnt/mstack-src
WHEELS=/mnt/mstack-wheels
TREE=/root/mstack
exec > >(tee -a "$OUT/vm-test.log") 2>&1
tee_pid=$!
status=1
finish() {
    exec >/dev/null 2>&1
    wait "$tee_pid"  # the whole log is in the share before the status is
    echo "$status" >"$OUT/status"
    sync
}
trap finish EXIT

step() { printf '\n==> guest: %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
export DEBIAN_FRONTEND=noninteractive
# What a root login has and a systemd service lacks (without HOME, Python's start-up asks
# NSS for the home directory: sockets that traced commands would show).
export HOME=/root USER=root LOGNAME=root
export PATH="/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
# The guest reaches no PyPI: pip installs from the wheels build-box downloaded.
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELS" PIP_DISABLE_PIP_VERSION_CHECK=1

step "$(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r), $(nproc) CPUs," \
    "$(awk '/MemTotal/ { print int($2 / 1024) " MiB" }' /proc/meminfo)"
for tag in mstack-src mstack-wheels; do
    mkdir -p "/mnt/$tag"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro "$tag" "/mnt/$tag" || exit 1
done

step "copying the source tree"
rm -rf "$TREE" && mkdir -p "$TREE"
tar -C "$SRC" --exclude=./.git --exclude=./build --exclude='*.egg-info' --exclude=./tests/bin \
    --exclude=./bench/bin --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache \
    --exclude=__pycache__ --exclude='*.so' --exclude='./bpf/*.o' --exclude='./mstack_bpf/bpf/*.o' \
    --exclude=./.vagrant --exclude=./vagrant/.vagrant -cf - . | tar -C "$TREE" -xf - || exit 1
cd "$TREE"
if [ -f "$OUT/src.bundle" ]; then  # the host's HEAD: git ls-files as on the host
    { git init -q && git fetch -q "$OUT/src.bundle" HEAD && git reset -q FETCH_HEAD; } \
        || { echo "guest: cannot make the tree a git checkout of $OUT/src.bundle"; exit 1; }
fi

step "network: nothing but the mirror's guestfwd"
# The guest must reach neither the mirror's own address (only the guestfwd leads there) nor
# a name server: qemu's restrict=on and the image's empty resolv.conf.
mirror_ip="$(cat "$OUT/mirror-ip" 2>/dev/null)"
if [ -n "$mirror_ip" ] && curl -s -o /dev/null --noproxy '*' -m 10 "http://$mirror_ip/"; then
    echo "guest: reached $mirror_ip directly: the VM's network is not isolated"; exit 1
fi
if getent ahosts deb.debian.org >/dev/null; then
    echo "guest: resolved a host name: the guest must use no name server"; exit 1
fi
echo "guest: $mirror_ip and DNS unreachable, as they must be"

step "apt-get update (the mirror, through qemu's guestfwd)"
apt-get update -qq || { echo "guest: the apt mirror is not reachable"; exit 1; }

step "make install"
make --no-print-directory install || exit 1

only="$(cat "$OUT/only" 2>/dev/null)"
if [ -n "$only" ]; then
    step "pytest $only"
    # shellcheck disable=SC2086
    MSTACK_PREFIX=/opt/mstack MSTACK_BINDIR=/usr/local/bin /opt/mstack/bin/python -m pytest \
        -q -p no:cacheprovider -rfEs $(cat "$OUT/pytest-args") $only
    status=$?
    exit
fi

step "make test"
make --no-print-directory test PYTEST_ARGS="-rfEs --durations=10 $(cat "$OUT/pytest-args")"
tests=$?
step "make test: exit status $tests"

step "provision.sh (install, demo, traced demo)"
SKIP_TESTS=1 bash vagrant/provision.sh "$TREE"
demo=$?
step "provision.sh: exit status $demo"

status=$(( tests != 0 ? tests : demo ))
step "done: make test $tests, provision.sh $demo"
