#!/usr/bin/env bash
# Run a command inside a throw-away qemu guest whose kernel has rdma_rxe, with a soft-RoCE device ready.
#
#   scripts/softroce-vm.sh [--timeout SECS] [--memory SIZE] [--cpus N] [--] CMD [ARG...]
#
# For hosts whose own kernel has no rdma_rxe (e.g. these Firecracker machines): boots Debian's 6.1 kernel
# under qemu (software emulation, no KVM needed) through virtme-ng. The guest sees the host's root file
# system read-only, keeps the current directory (writable), and has:
#   rxe0  on veth0 (192.168.77.1/24), its peer veth1 has 192.168.77.2/24; RoCE v2 GID index 1.
# These addresses exist only inside the guest. CMD runs with these exported:
#   SOFTROCE_DEV=rxe0 SOFTROCE_ADDR=192.168.77.1 SOFTROCE_PEER_ADDR=192.168.77.2 SOFTROCE_GID_INDEX=1
#   SOFTROCE_PORT=1
# plus the host's RUST_LOG, RUST_BACKTRACE and MSGR_* variables. The script exits with CMD's exit status
# (124 on timeout, 125 if the guest could not be booted or never reported a status).
#
# The guest kernel is fetched once (apt-get download + dpkg -x; never installed on the host) and cached in
# ${MSGR_SOFTROCE_CACHE:-$HOME/.cache/msgr/softroce}. Host needs: qemu-system-x86, busybox-static, kmod,
# virtme-ng (pip), apt. The whole run is bounded by --timeout (default 900 s); on timeout qemu is killed
# with its process group.
set -euo pipefail

TIMEOUT=900
MEMORY=1G
CPUS=2
# Under emulation the kernel distrusts the TSC and falls back to the HPET, which makes every clock read a
# trapped MMIO access (tens of microseconds): trust the TSC so clock_gettime stays in the vDSO, as on real
# hardware. Override with MSGR_SOFTROCE_APPEND.
APPEND=${MSGR_SOFTROCE_APPEND-tsc=reliable clocksource=tsc}
while (($#)); do
    case "$1" in
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --memory) MEMORY="$2"; shift 2 ;;
    --cpus) CPUS="$2"; shift 2 ;;
    --) shift; break ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) break ;;
    esac
done
if (($# == 0)); then
    echo "usage: $0 [--timeout SECS] [--memory SIZE] [--cpus N] [--] CMD [ARG...]" >&2
    exit 2
fi

die() {
    echo "softroce-vm: $*" >&2
    exit 125
}

need() {
    local tool="$1" pkg="$2"
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (install $pkg)"
}
need vng "virtme-ng (pip install virtme-ng==1.42)"
need qemu-system-x86_64 "the Debian package qemu-system-x86"
need busybox "the Debian package busybox-static"
need depmod "the Debian package kmod"
need apt-get "apt (a Debian host)"
need dpkg "dpkg"

case "$PWD" in
*[[:space:]]*) die "the working directory '$PWD' contains whitespace, which virtme-ng 1.42 cannot pass on (use a symlink)" ;;
esac

CACHE="${MSGR_SOFTROCE_CACHE:-$HOME/.cache/msgr/softroce}"

# Fetch, unpack and prepare the guest kernel once; prints the path of the kernel tree.
ensure_kernel() {
    if [[ -f "$CACHE/ready" ]]; then
        cat "$CACHE/ready"
        return
    fi
    mkdir -p "$CACHE"
    local pkg
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null | awk '{print $1}' | sort -V | tail -1)
    if [[ -z "$pkg" ]]; then
        apt-get -o DPkg::Lock::Timeout=600 update -q >&2 || die "apt-get update failed"
        pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1)
    fi
    [[ -n "$pkg" ]] || die "no linux-image-6.1.0-NN-amd64 package in the apt lists (a Debian 12 apt source is needed)"
    local kver=${pkg#linux-image-}
    local dl tree="$CACHE/$kver"
    dl=$(mktemp -d /tmp/softroce-kernel.XXXXXX)
    chmod 755 "$dl"
    echo "softroce-vm: fetching guest kernel $pkg (once)" >&2
    (cd "$dl" && apt-get download -q "$pkg" >&2) || { rm -rf "$dl"; die "apt-get download $pkg failed"; }
    rm -rf "$tree"
    dpkg -x "$dl"/*.deb "$tree" || { rm -rf "$dl"; die "dpkg -x failed"; }
    rm -rf "$dl"
    depmod -b "$tree" "$kver" || die "depmod failed"
    [[ -f "$tree/lib/modules/$kver/kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko" ]] ||
        die "$pkg has no rdma_rxe module"
    # Boot an uncompressed vmlinux (saves seconds of in-guest decompression under emulation): the bzImage
    # payload is xz; decompress from its magic. Fall back to the bzImage if that fails.
    local image="$tree/boot/vmlinuz-$kver" offset
    offset=$(LC_ALL=C grep -aobP '\xfd7zXZ\x00' "$image" 2>/dev/null | head -1 | cut -d: -f1 || true)
    if [[ -n "$offset" ]]; then
        tail -c +$((offset + 1)) "$image" | xz -dc --single-stream >"$tree/boot/vmlinux-$kver" 2>/dev/null || true
    fi
    if [[ -s "$tree/boot/vmlinux-$kver" ]] && file "$tree/boot/vmlinux-$kver" 2>/dev/null | grep -q ELF; then
        image="$tree/boot/vmlinux-$kver"
    else
        rm -f "$tree/boot/vmlinux-$kver"
    fi
    echo "$image" >"$CACHE/ready"
    echo "$image"
}

IMAGE=$(ensure_kernel)
[[ -f "$IMAGE" ]] || { rm -f "$CACHE/ready"; die "cached kernel $IMAGE is gone; run again to refetch"; }

# The guest script: set up rxe, run the command, print a status marker (vng's own status is not CMD's).
MARKER="SOFTROCE_VM_EXIT_STATUS"
GUEST=$(mktemp /tmp/softroce-guest.XXXXXX.sh)
LOG=$(mktemp /tmp/softroce-log.XXXXXX)
cleanup() { rm -f "$GUEST" "$LOG"; }
trap cleanup EXIT
{
    echo 'set -u'
    echo 'setup() {'
    echo '  modprobe rdma_rxe && ip link set lo up &&'
    echo '  ip link add veth0 type veth peer name veth1 &&'
    echo '  ip addr add 192.168.77.1/24 dev veth0 && ip addr add 192.168.77.2/24 dev veth1 &&'
    echo '  ip link set veth0 up && ip link set veth1 up &&'
    echo '  rdma link add rxe0 type rxe netdev veth0'
    echo '}'
    echo "if ! setup; then echo 'softroce-vm: rxe setup failed in the guest' >&2; echo '$MARKER=125'; exit 0; fi"
    echo 'for i in $(seq 50); do [ -e /sys/class/infiniband/rxe0/ports/1/state ] && grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state && break; sleep 0.1; done'
    echo 'export SOFTROCE_DEV=rxe0 SOFTROCE_ADDR=192.168.77.1 SOFTROCE_PEER_ADDR=192.168.77.2 SOFTROCE_GID_INDEX=1 SOFTROCE_PORT=1'
    echo 'ulimit -l unlimited 2>/dev/null || true'
    for var in $(compgen -e); do
        case "$var" in
        RUST_LOG | RUST_BACKTRACE | MSGR_* | CARGO_TERM_COLOR) printf 'export %s=%q\n' "$var" "${!var}" ;;
        esac
    done
    printf 'cd %q || { echo "%s=125"; exit 0; }\n' "$PWD" "$MARKER"
    printf '%q ' "$@"
    echo
    echo "echo \"$MARKER=\$?\""
} >"$GUEST"
chmod 755 "$GUEST"

START=$(date +%s)
set +e
# `timeout` signals its whole process group on expiry, which includes qemu; the pipe through cat keeps
# qemu from truncating its output when stdout is a file.
timeout --kill-after=15 "$TIMEOUT" \
    vng --disable-kvm --force-9p --memory "$MEMORY" --cpus "$CPUS" --run "$IMAGE" --rwdir "$PWD" \
    ${APPEND:+--append "$APPEND"} --exec "sh $GUEST" </dev/null 2>&1 | cat | tee "$LOG"
VNG_STATUS=${PIPESTATUS[0]}
set -e
echo "softroce-vm: guest run took $(($(date +%s) - START)) s" >&2
if ((VNG_STATUS == 124 || VNG_STATUS == 137)); then
    echo "softroce-vm: timed out after ${TIMEOUT}s; qemu killed" >&2
    exit 124
fi
STATUS=$(grep -a "^$MARKER=" "$LOG" | tail -1 | cut -d= -f2 | tr -dc '0-9')
if [[ -z "$STATUS" ]]; then
    echo "softroce-vm: the guest never reported a status (vng exited $VNG_STATUS)" >&2
    exit 125
fi
exit "$STATUS"
