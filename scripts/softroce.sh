#!/usr/bin/env bash
# Soft-RoCE on a host whose kernel has rdma_rxe: add or remove an rxe device on a network interface.
#
#   scripts/softroce.sh up   NETDEV [RXE_NAME]   # default name: rxe_NETDEV
#   scripts/softroce.sh down NETDEV [RXE_NAME]
#   scripts/softroce.sh status
#
# `up` loads rdma_rxe, runs `rdma link add RXE_NAME type rxe netdev NETDEV`, waits for the port to be
# ACTIVE, and prints what msgr needs, one KEY=value per line:
#   DEVICE=rxe_eth0  PORT=1  ADDR=<NETDEV's first IPv4 address>  GID_INDEX=<index of its RoCE v2 GID>
# (rdma_cm cannot use 127.0.0.1 over rxe: connect to ADDR.) Idempotent: an existing device is reused.
# Needs root, iproute2's `rdma` and kmod. For hosts without rdma_rxe (like Firecracker VMs) use
# scripts/softroce-vm.sh, which boots a throw-away qemu guest with rxe0 ready.
set -euo pipefail

die() { echo "softroce: $*" >&2; exit 1; }

cmd=${1:-}
case "$cmd" in
up | down) netdev=${2:?usage: $0 $cmd NETDEV [RXE_NAME]}; name=${3:-rxe_$netdev} ;;
status) ;;
*) echo "usage: $0 up|down NETDEV [RXE_NAME] | status" >&2; exit 2 ;;
esac

command -v rdma >/dev/null || die "the 'rdma' tool is missing (install iproute2)"

if [[ "$cmd" == status ]]; then
    rdma link show
    exit 0
fi

[[ -e "/sys/class/net/$netdev" ]] || die "no network interface $netdev"

if [[ "$cmd" == down ]]; then
    if [[ -e "/sys/class/infiniband/$name" ]]; then
        rdma link delete "$name"
        echo "removed $name"
    else
        echo "$name does not exist"
    fi
    exit 0
fi

if ! [[ -e /sys/module/rdma_rxe ]]; then
    modprobe rdma_rxe 2>/dev/null ||
        die "cannot load rdma_rxe: this kernel has no soft-RoCE driver; use scripts/softroce-vm.sh instead"
fi
if ! [[ -e "/sys/class/infiniband/$name" ]]; then
    ip link set "$netdev" up
    rdma link add "$name" type rxe netdev "$netdev" || die "rdma link add $name on $netdev failed"
fi
for _ in $(seq 50); do
    grep -q ACTIVE "/sys/class/infiniband/$name/ports/1/state" 2>/dev/null && break
    sleep 0.1
done
grep -q ACTIVE "/sys/class/infiniband/$name/ports/1/state" || die "$name port 1 is not ACTIVE (is $netdev up?)"

addr=$(ip -4 -o addr show dev "$netdev" | awk '{ split($4, a, "/"); print a[1]; exit }')
gid_index=""
if [[ -n "$addr" ]]; then
    # The RoCE v2 GID of an IPv4 address is ::ffff:a.b.c.d.
    want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' ${addr//./ })
    for gid in /sys/class/infiniband/"$name"/ports/1/gids/*; do
        idx=${gid##*/}
        type=$(cat "/sys/class/infiniband/$name/ports/1/gid_attrs/types/$idx" 2>/dev/null || true)
        if [[ "$(cat "$gid")" == "$want" && "$type" == *"v2"* ]]; then
            gid_index=$idx
            break
        fi
    done
fi
echo "DEVICE=$name"
echo "PORT=1"
echo "ADDR=${addr:-none (give $netdev an IPv4 address)}"
echo "GID_INDEX=${gid_index:-unknown}"
