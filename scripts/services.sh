#!/usr/bin/env bash
# Local container services for the platform: a private Docker engine and an image registry, both on loopback only.
#
#   scripts/services.sh start    install missing packages (root), start dockerd + registry, build the base image
#   scripts/services.sh stop     stop both by PID (TERM, then KILL after 20 s)
#   scripts/services.sh status   exit 0 iff the engine and the registry both answer
#   scripts/services.sh env      print `export` lines for eval: DOCKER_HOST and SERA_REGISTRY
#   scripts/services.sh start-engine   only an engine, with the base image: another worker's, next to the main one
#                                      (`SERA_SERVICES_DIR=<dir> scripts/services.sh start-engine`; `stop` stops it)
#
# The engine gets its own socket, data root and exec root under the state dir, so it never clashes with another
# engine on the machine. Settings: SERA_SERVICES_DIR (state dir, default <project>/var/services),
# SERA_REGISTRY_PORT (default 5000), SERA_BASE_IMAGE (default sera-base:bookworm), SERA_BASE_FROM (start-engine:
# the state dir of the engine whose base image is copied, default <project>/var/services).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$(realpath -m "${SERA_SERVICES_DIR:-$ROOT/var/services}")"
REGISTRY_ADDR="127.0.0.1:${SERA_REGISTRY_PORT:-5000}"
BASE_IMAGE="${SERA_BASE_IMAGE:-sera-base:bookworm}"
SOCKET="$STATE/docker.sock"
DOCKERD_PIDFILE="$STATE/dockerd.pid"
BASE_FROM="$(realpath -m "${SERA_BASE_FROM:-$ROOT/var/services}")"
REGISTRY_PIDFILE="$STATE/registry.pid"
# The storage driver that first worked is pinned: images made under one driver are invisible under another.
DRIVER_FILE="$STATE/storage-driver"
PACKAGES=(docker.io containerd runc iptables docker-registry debootstrap git busybox-static redis-server)
READY_TIMEOUT_S=60
STOP_TIMEOUT_S=20

export DOCKER_HOST="unix://$SOCKET"

say() { echo "[services] $*"; }
die() { say "error: $*" >&2; exit 1; }
# shellcheck source=packages.sh
source "$ROOT/scripts/packages.sh"

# PID from a pid file, printed only when that process is alive and is the program we expect (guards PID reuse).
live_pid() {
    local pidfile=$1 program=$2 pid
    [[ -s $pidfile ]] || return 1
    pid="$(<"$pidfile")"
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] || return 1
    [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline")" == *"$program"* ]] || return 1
    echo "$pid"
}

engine_answers() { timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# Plain bash HTTP so the check needs no curl/wget on a minimal machine.
registry_answers() {
    local host=${REGISTRY_ADDR%:*} port=${REGISTRY_ADDR##*:}
    # shellcheck disable=SC2016
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "GET /v2/ HTTP/1.0\r\nHost: %s:%s\r\n\r\n" "$0" "$1" >&3
        head -n1 <&3 | grep -q " 200 "' "$host" "$port" 2>/dev/null
}

# Wait until `check` succeeds while `pid` lives; on failure show the last `lines` of the log.
wait_ready() {
    local name=$1 pid=$2 check=$3 log=$4 lines=${5:-20} deadline=$((SECONDS + READY_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        $check && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            say "$name exited during start-up; last log lines ($log):"
            tail -n "$lines" "$log" | sed 's/^/    /'
            return 1
        fi
        sleep 0.2
    done
    say "$name did not answer within ${READY_TIMEOUT_S}s; last log lines ($log):"
    tail -n "$lines" "$log" | sed 's/^/    /'
    return 1
}

launch_dockerd() {
    local driver=$1
    # setsid: the engine must outlive the shell (and process group) that started it.
    setsid /usr/sbin/dockerd \
        --host="$DOCKER_HOST" \
        --config-file="$STATE/daemon.json" \
        --storage-driver="$driver" \
        --iptables=false --bridge=none \
        --data-root="$STATE/docker" \
        --exec-root="$STATE/exec" \
        --pidfile="$DOCKERD_PIDFILE" \
        </dev/null >>"$STATE/dockerd.log" 2>&1 &
    echo $!
}

start_dockerd() {
    local pid driver log_lines=20
    if pid="$(live_pid "$DOCKERD_PIDFILE" dockerd)"; then
        wait_ready dockerd "$pid" engine_answers "$STATE/dockerd.log" || die "dockerd (pid $pid) does not answer"
        say "dockerd already running (pid $pid)"
        return 0
    fi
    rm -f "$DOCKERD_PIDFILE"
    ((EUID == 0)) || die "starting dockerd needs root"
    (( ${#SOCKET} < 100 )) || die "socket path too long for a unix socket: $SOCKET (set SERA_SERVICES_DIR shorter)"
    [[ -f $STATE/daemon.json ]] || echo '{}' >"$STATE/daemon.json"
    if [[ -s $DRIVER_FILE ]]; then
        driver="$(<"$DRIVER_FILE")"
    else
        driver=overlay2
        # This first start probes overlay2, which fails on some filesystems: the log's last line says why.
        log_lines=1
    fi
    pid="$(launch_dockerd "$driver")"
    if ! wait_ready dockerd "$pid" engine_answers "$STATE/dockerd.log" "$log_lines"; then
        [[ $driver == overlay2 && ! -s $DRIVER_FILE ]] || die "dockerd failed to start"
        kill -0 "$pid" 2>/dev/null && stop_pid dockerd "$pid"
        say "overlay2 failed; retrying with vfs"
        driver=vfs
        pid="$(launch_dockerd "$driver")"
        wait_ready dockerd "$pid" engine_answers "$STATE/dockerd.log" || die "dockerd failed to start"
    fi
    echo "$driver" >"$DRIVER_FILE"
    say "dockerd ready (pid $pid, $driver, $DOCKER_HOST)"
}

start_registry() {
    local pid
    if pid="$(live_pid "$REGISTRY_PIDFILE" docker-registry)"; then
        wait_ready registry "$pid" registry_answers "$STATE/registry.log" || die "registry (pid $pid) does not answer"
        say "registry already running (pid $pid)"
        return 0
    fi
    rm -f "$REGISTRY_PIDFILE"
    registry_answers && die "something else already answers on $REGISTRY_ADDR (set SERA_REGISTRY_PORT)"
    mkdir -p "$STATE/registry"
    cat >"$STATE/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
    setsid /usr/bin/docker-registry serve "$STATE/registry.yml" </dev/null >>"$STATE/registry.log" 2>&1 &
    pid=$!
    echo "$pid" >"$REGISTRY_PIDFILE"
    wait_ready registry "$pid" registry_answers "$STATE/registry.log" || die "registry failed to start"
    say "registry ready (pid $pid, http://$REGISTRY_ADDR)"
}

stop_pid() {
    local name=$1 pid=$2 deadline=$((SECONDS + STOP_TIMEOUT_S))
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) ignored TERM for ${STOP_TIMEOUT_S}s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

stop_service() {
    local name=$1 pidfile=$2 program=$3 pid
    if pid="$(live_pid "$pidfile" "$program")"; then
        stop_pid "$name" "$pid"
        say "$name stopped (pid $pid)"
    else
        say "$name not running"
    fi
    rm -f "$pidfile"
}

cmd_start() {
    ensure_packages "${PACKAGES[@]}"
    mkdir -p "$STATE"
    start_dockerd
    start_registry
    # Cheap when the base is current (a label check); rebuilt from the cached rootfs when its config changed.
    SERA_SERVICES_DIR="$STATE" "$ROOT/scripts/build_base_image.sh"
}

# A commit image's fingerprint includes its base image's id, so every engine of a fleet must hold the same base
# image, not merely the same files: importing the rootfs again would give a new id (it records the import time),
# and that engine would rebuild every commit image instead of pulling it. So the base is copied from the engine
# under SERA_BASE_FROM when that one has it, and only imported from the cached rootfs when none does.
load_base_image() {
    local source="unix://$BASE_FROM/docker.sock" id
    if [[ $BASE_FROM == "$STATE" ]] ||
        ! id="$(DOCKER_HOST=$source docker image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null)"; then
        say "no engine at $source has $BASE_IMAGE; importing it from the cached rootfs (an id of its own)"
        SERA_SERVICES_DIR="$BASE_FROM" "$ROOT/scripts/build_base_image.sh"  # its cache, this engine (DOCKER_HOST)
        return
    fi
    if [[ "$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null)" == "$id" ]]; then
        say "$BASE_IMAGE is up to date (${id:7:12})"
        return 0
    fi
    DOCKER_HOST=$source docker save "$BASE_IMAGE" | docker load >/dev/null
    say "copied $BASE_IMAGE (${id:7:12}) from $source"
}

cmd_start_engine() {
    ensure_packages "${PACKAGES[@]}"
    mkdir -p "$STATE"
    start_dockerd
    load_base_image
}

cmd_stop() {
    stop_service registry "$REGISTRY_PIDFILE" docker-registry
    stop_service dockerd "$DOCKERD_PIDFILE" dockerd
    # dockerd normally stops its managed containerd itself; after a KILL it may be left behind.
    if live_pid "$STATE/exec/containerd/containerd.pid" containerd >/dev/null; then
        stop_service containerd "$STATE/exec/containerd/containerd.pid" containerd
    fi
    # The engine bind-mounts its data root (and container layers) under the state dir; leave no mount behind.
    awk -v state="$STATE/" 'index($2, state) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done
}

cmd_status() {
    local rc=0 pid
    if pid="$(live_pid "$DOCKERD_PIDFILE" dockerd)" && engine_answers; then
        say "dockerd running (pid $pid, $DOCKER_HOST)"
    else
        say "dockerd not answering"; rc=1
    fi
    if pid="$(live_pid "$REGISTRY_PIDFILE" docker-registry)" && registry_answers; then
        say "registry running (pid $pid, http://$REGISTRY_ADDR)"
    else
        say "registry not answering"; rc=1
    fi
    return "$rc"
}

cmd_env() {
    echo "export DOCKER_HOST=$DOCKER_HOST"
    echo "export SERA_REGISTRY=$REGISTRY_ADDR"
}

case "${1:-}" in
    start) cmd_start ;;
    start-engine) cmd_start_engine ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 start|start-engine|stop|status|env" >&2; exit 2 ;;
esac
