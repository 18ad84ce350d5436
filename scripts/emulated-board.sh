#!/usr/bin/env bash
# Emulated aarch64 board: a Debian bookworm arm64 chroot run through qemu-user, with the TVM
# runtime in a venv, serving TVM RPC under the key "arm64-emu".
#
#   scripts/emulated-board.sh build    build once (cached in $TVMQ_BOARD_ROOT, ~5 min, ~0.8 GB)
#   scripts/emulated-board.sh start    build if needed, then start tracker + board server
#   scripts/emulated-board.sh stop     stop what `start` started (tvmq device down)
#   scripts/emulated-board.sh status   print whether the chroot is built
#
# Needs root (debootstrap, chroot, binfmt_misc). Latency measured on this board is emulation
# on the host CPU: it says nothing about a Cortex core. Use it for correctness and the harness.
set -euo pipefail

ROOT="${TVMQ_BOARD_ROOT:-$HOME/.cache/tvmq/boards/arm64}"
SUITE="${TVMQ_BOARD_SUITE:-bookworm}"
MIRROR="${TVMQ_BOARD_MIRROR:-http://deb.debian.org/debian}"
VENV=/opt/tvm-venv
READY="$ROOT/.tvmq-ready"
PY="${PYTHON:-python3}"
# Pins: see shared/PLATFORM.md (tvm-ffi 0.1.15+ segfaults in save_json).
WHEELS=(apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy cloudpickle psutil)

log() { echo "[emulated-board] $*" >&2; }
die() { echo "[emulated-board] error: $*" >&2; exit 1; }

ensure_host_tools() {
    [ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot); run with sudo"
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
            || { apt-get update && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y --no-install-recommends "${missing[@]}"; }
    fi
}

ensure_binfmt() {
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc (container without privileges?)"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
        if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
            # 'F' (fix binary): the interpreter is opened now, so the chroot needs no qemu copy.
            echo ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F' \
                > /proc/sys/fs/binfmt_misc/register || die "cannot register qemu-aarch64 with binfmt_misc"
        fi
    fi
}

ensure_mounts() {
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
}

download_wheels() {
    local dest="$ROOT/opt/wheels"
    mkdir -p "$dest"
    log "downloading aarch64 wheels on the host (pip inside the chroot cannot verify certificates)"
    "$PY" -m pip download --quiet --dest "$dest" --platform manylinux_2_28_aarch64 \
        --only-binary=:all: --python-version 3.11 --implementation cp "${WHEELS[@]}"
}

build() {
    ensure_host_tools
    ensure_binfmt
    if [ -f "$READY" ]; then log "already built: $ROOT"; return 0; fi
    mkdir -p "$(dirname "$ROOT")"
    if [ ! -x "$ROOT/usr/bin/python3" ]; then
        rm -rf "$ROOT"
        log "debootstrap $SUITE arm64 into $ROOT (first stage)"
        debootstrap --arch=arm64 --foreign --variant=minbase \
            --include=python3,python3-venv,python3-pip "$SUITE" "$ROOT" "$MIRROR"
        log "second stage (emulated, a few minutes)"
        chroot "$ROOT" /debootstrap/debootstrap --second-stage
    fi
    download_wheels
    ensure_mounts
    log "creating $VENV in the chroot"
    chroot "$ROOT" /usr/bin/python3 -m venv "$VENV"
    chroot "$ROOT" "$VENV/bin/pip" install --quiet --no-index --find-links /opt/wheels "${WHEELS[@]}"
    log "checking the runtime imports under emulation (~10 s)"
    chroot "$ROOT" "$VENV/bin/python" -c "import tvm, tvm.rpc; print('tvm', tvm.__version__)"
    date -u +%FT%TZ > "$READY"
    log "built: $ROOT ($(du -sh "$ROOT" 2>/dev/null | cut -f1))"
}

start() {
    build
    ensure_mounts
    "$PY" -c "import tvmq.device as d; print(d.up(emulated_arm=True))"
}

case "${1:-start}" in
    build) build ;;
    start) start ;;
    stop) "$PY" -c "import tvmq.device as d; print(d.down())" ;;
    status) if [ -f "$READY" ]; then echo "built: $ROOT"; else echo "not built: $ROOT"; exit 1; fi ;;
    *) die "usage: $0 [build|start|stop|status]" ;;
esac
