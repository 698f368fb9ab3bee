#!/usr/bin/env bash
# All RDMA checks of one soft-RoCE guest run (ci/test.sh boots ONE guest and runs this in it):
#   1. the soft-RoCE integration tests (tests/rdma_softroce.rs, release build), one at a time, and a
#      registration refused for RLIMIT_MEMLOCK (msgr as an unprivileged uid with a 64 KiB limit must
#      fail with an error naming the limit); then the Ceph interop tests on Ceph's own RDMA wire
#      (tests/rdma_ceph_interop.rs: a real ceph-mon and the ceph CLI with ms_type = async+rdma, and
#      msgr <-> msgr on both wires, whose figures join the report);
#   2. perftest (ib_send_lat, ib_send_bw, ib_write_bw as an upper bound) and `msgr bench --stack rdma`
#      on the same device, and the ratios the issue asks for.
#
#   scripts/softroce-vm.sh -- scripts/rdma-checks.sh TEST_BINARY MSGR_CLI [REPORT_FILE [CEPH_TEST_BINARY]]
#
# CEPH_TEST_BINARY is the release build of tests/rdma_ceph_interop.rs (ci/test.sh passes it; `-` or
# nothing: not run). TEST_BINARY `-` skips the tests (scripts/compare.sh --rdma uses that for its RDMA rows). MSGR_CLI is the
# release `msgr` built with `--features rdma`. msgr's figures come from its JSON reports (p50_ns of the
# latency run; msgs_per_sec x size of the throughput run), read with sed/awk only (the guest may lack jq).
# The report also shows, from the same guest, the round trip of the protocol alone (`msgr bench --stack
# mem`) and of msgr over kernel TCP (`--stack posix`): what the messenger costs under this emulation,
# apart from any transport. Client and server workers are pinned to CPUs 0 and 1 (as perftest's two
# processes would be placed) and spin without sleeping on --stack rdma, as perftest does.
#
# Needs SOFTROCE_DEV / SOFTROCE_ADDR / SOFTROCE_GID_INDEX (softroce-vm.sh exports them; on a host with a
# real device set them yourself). Exit status: the tests' (perftest/bench failures also fail it). The
# ratios are reported, not enforced: timings under emulation are noisy; comparisons within one run hold.
# perftest's latency tools report half a round trip (t_typical), so msgr's round trip is compared with
# twice that. Bandwidths are in MiB/s (perftest's MB/sec is 2^20 bytes). Each measurement runs
# MSGR_RDMA_ROUNDS times (default 3), interleaved, and the best of each side is compared.
set -u

TEST_BIN=${1:?usage: rdma-checks.sh TEST_BINARY MSGR_CLI [REPORT_FILE]}
MSGR_CLI=${2:?usage: rdma-checks.sh TEST_BINARY MSGR_CLI [REPORT_FILE]}
REPORT=${3:-}
CEPH_TEST_BIN=${4:--}
DEV=${SOFTROCE_DEV:?SOFTROCE_DEV is not set: run inside scripts/softroce-vm.sh}
ADDR=${SOFTROCE_ADDR:?SOFTROCE_ADDR is not set}
GID=${SOFTROCE_GID_INDEX:-1}
LAT_SIZE=64
LAT_ITERS=${MSGR_RDMA_LAT_ITERS:-2000}
BW_SIZE=1048576
BW_SIZE_ARG=1m
BW_ITERS=${MSGR_RDMA_BW_ITERS:-150}
ROUNDS=${MSGR_RDMA_ROUNDS:-3}
WORK=$(mktemp -d /tmp/rdma-checks.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
status=0

step() { printf '\n--- %s (at %ss)\n' "$1" "$SECONDS"; }

if [[ "$TEST_BIN" == "-" ]]; then
    echo "rdma-checks: no test binary given (-): comparison only"
else
    step "rdma_softroce tests on $DEV ($ADDR, GID index $GID)"
    if ! timeout 900 "$TEST_BIN" --test-threads=1; then
        echo "rdma-checks: the soft-RoCE tests FAILED" >&2
        status=1
    fi
fi

# A registration refused for RLIMIT_MEMLOCK must fail clearly, naming the limit. Root ignores the limit
# (CAP_IPC_LOCK), so this runs msgr as an unprivileged uid with a 64 KiB lock limit; the verbs device
# nodes are opened up for it (this guest is throw-away).
if [[ "$TEST_BIN" != "-" ]]; then
    step "RLIMIT_MEMLOCK: msgr bench --stack rdma as uid 65534 with memlock 64 KiB must fail naming the limit"
    chmod 666 /dev/infiniband/* 2>/dev/null
    cli_abs=$(readlink -f "$MSGR_CLI")
    if (cd / && timeout 60 prlimit --memlock=65536:65536 setpriv --reuid=65534 --regid=65534 --clear-groups \
        "$cli_abs" bench --stack rdma --rdma-device "$DEV" --rdma-gid-index "$GID" --rdma-addr "$ADDR" \
        --sizes 64 --count 10 --warmup 0) >"$WORK/memlock.out" 2>&1; then
        echo "rdma-checks: msgr ran with a 64 KiB RLIMIT_MEMLOCK: expected a registration failure" >&2
        status=1
    elif grep -q "RLIMIT_MEMLOCK is 65536" "$WORK/memlock.out"; then
        echo "ok: $(grep -m1 RLIMIT_MEMLOCK "$WORK/memlock.out")"
    else
        echo "rdma-checks: the failure does not name RLIMIT_MEMLOCK and its value:" >&2
        cat "$WORK/memlock.out" >&2
        status=1
    fi
fi

# The Ceph interop tests: a real ceph-mon and the real ceph CLI over Ceph's RDMA wire (async+rdma), and
# msgr <-> msgr on both wires. Output is shown (--nocapture): the figures are part of the report.
CEPH_FIGURES=""
if [[ "$CEPH_TEST_BIN" != "-" ]]; then
    step "rdma_ceph_interop tests on $DEV (ceph-mon and ceph CLI with ms_type = async+rdma)"
    if ! timeout 600 "$CEPH_TEST_BIN" --test-threads=1 --nocapture 2>&1 | tee "$WORK/ceph.out"; then
        echo "rdma-checks: the Ceph RDMA interop tests FAILED" >&2
        status=1
    fi
    if ! grep -q '^test result: ok' "$WORK/ceph.out"; then
        echo "rdma-checks: the Ceph RDMA interop tests did not report success" >&2
        status=1
    fi
    CEPH_FIGURES=$(grep -m1 -o 'msgr <-> msgr over.*' "$WORK/ceph.out")
    echo "rdma-checks: Ceph interop step done at ${SECONDS}s"
fi

# True once something listens on TCP port $1 (perftest's out-of-band exchange port), within $2 seconds.
wait_listen() {
    local hex deadline=$((SECONDS + $2))
    hex=$(printf '%04X' "$1")
    while ((SECONDS < deadline)); do
        awk -v p=":$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Run a perftest server and client pair; prints the client's output. A failed attempt (perftest's
# out-of-band TCP exchange is fragile under emulation; a client that fails part way takes the server
# down with it) is retried with a fresh server, up to 3 times, showing what the server said.
PERFTEST_PORT=18515
perftest_pair() {
    local tool=$1 attempt server
    shift
    for attempt in 1 2 3; do
        timeout 180 "$tool" -d "$DEV" -x "$GID" -p "$PERFTEST_PORT" "$@" >"$WORK/$tool.server" 2>&1 &
        server=$!
        wait_listen "$PERFTEST_PORT" 20
        if timeout 180 "$tool" -d "$DEV" -x "$GID" -p "$PERFTEST_PORT" "$@" 127.0.0.1 \
            >"$WORK/$tool.client" 2>&1; then
            wait "$server" 2>/dev/null
            cat "$WORK/$tool.client"
            return 0
        fi
        kill "$server" 2>/dev/null
        wait "$server" 2>/dev/null
        echo "rdma-checks: $tool attempt $attempt failed: $(tail -n 2 "$WORK/$tool.client" | tr '\n' ' ')" \
            "| server: $(tail -n 2 "$WORK/$tool.server" | tr '\n' ' ')" >&2
        sleep 1
    done
    cat "$WORK/$tool.client"
    return 1
}

# The data row of perftest's table: the first line whose first field is the message size.
perftest_col() {
    local file=$1 size=$2 col=$3
    awk -v s="$size" -v c="$col" '$1 == s && NF >= c { print $c; exit }' "$file"
}

# Noise under emulation is large (other load on the host changes the guest's speed minute by minute), so
# the perftest and msgr measurements are interleaved, ROUNDS times each, and the best of each is kept.
best() { # best min|max VALUES...: the smallest or largest of the non-empty values
    local how=$1
    shift
    printf '%s\n' "$@" | awk -v how="$how" 'NF && ($1 + 0 > 0) {
            if (n == 0 || (how == "min" && $1 + 0 < b + 0) || (how == "max" && $1 + 0 > b + 0)) b = $1
            n++
        }
        END { if (n) print b }'
}
# The first record's FIELD from a `msgr bench --json` report (pretty-printed: one "key": value a line).
json_field() {
    local file=$1 field=$2
    sed -n "s/^ *\"$field\": *\([0-9.eE+-]*\),\{0,1\}$/\1/p" "$file" | head -n 1
}
# msgr bench over RDMA on this device, bounded by SECS; extra arguments pick mode, size and count.
msgr_rdma() {
    local secs=$1 json=$2
    shift 2
    rm -f "$json"
    timeout "$secs" "$MSGR_CLI" bench --stack rdma --rdma-device "$DEV" --rdma-gid-index "$GID" --rdma-addr "$ADDR" \
        --client-cpus 0 --server-cpus 1 --json "$json" "$@"
}
LATS=() SEND_BWS=() WRITE_BWS=() MSGR_RTTS=() MSGR_BWS=()
for round in $(seq "$ROUNDS"); do
    step "round $round: ib_send_lat -s $LAT_SIZE -n $LAT_ITERS"
    perftest_pair ib_send_lat -s "$LAT_SIZE" -n "$LAT_ITERS" || status=1
    # columns: #bytes #iterations t_min t_max t_typical t_avg t_stdev 99% 99.9%
    LATS+=("$(perftest_col "$WORK/ib_send_lat.client" "$LAT_SIZE" 5)")

    step "round $round: msgr bench --stack rdma --mode latency --sizes $LAT_SIZE --count $LAT_ITERS"
    msgr_rdma 300 "$WORK/msgr.lat.json" --mode latency --sizes "$LAT_SIZE" --count "$LAT_ITERS" \
        --warmup 200 || status=1
    MSGR_RTTS+=("$(json_field "$WORK/msgr.lat.json" p50_ns | awk 'NF { printf "%.2f", $1 / 1000 }')")

    step "round $round: ib_send_bw -s $BW_SIZE -n $BW_ITERS"
    perftest_pair ib_send_bw -s "$BW_SIZE" -n "$BW_ITERS" || status=1
    # columns: #bytes #iterations BW_peak BW_average MsgRate
    SEND_BWS+=("$(perftest_col "$WORK/ib_send_bw.client" "$BW_SIZE" 4)")

    step "round $round: msgr bench --stack rdma --mode throughput --sizes $BW_SIZE_ARG --count $BW_ITERS"
    msgr_rdma 600 "$WORK/msgr.bw.json" --mode throughput --sizes "$BW_SIZE_ARG" \
        --count "$BW_ITERS" --warmup 16 || status=1
    MSGR_BWS+=("$(json_field "$WORK/msgr.bw.json" msgs_per_sec |
        awk -v s="$BW_SIZE" 'NF { printf "%.2f", $1 * s / 1048576 }')")

    step "round $round: ib_write_bw -s $BW_SIZE -n $BW_ITERS (upper bound)"
    perftest_pair ib_write_bw -s "$BW_SIZE" -n "$BW_ITERS" || status=1
    WRITE_BWS+=("$(perftest_col "$WORK/ib_write_bw.client" "$BW_SIZE" 4)")
done
echo "samples: ib_send_lat t_typical ${LATS[*]}; msgr rtt p50 ${MSGR_RTTS[*]}; ib_send_bw ${SEND_BWS[*]};" \
    "msgr bw ${MSGR_BWS[*]}; ib_write_bw ${WRITE_BWS[*]}"
LAT_TYPICAL=$(best min "${LATS[@]}")
MSGR_RTT=$(best min "${MSGR_RTTS[@]}")
SEND_BW=$(best max "${SEND_BWS[@]}")
MSGR_BW=$(best max "${MSGR_BWS[@]}")
WRITE_BW=$(best max "${WRITE_BWS[@]}")

# msgr's own round trip without RDMA, for scale: the protocol alone and over kernel TCP.
MEM_RTT="" POSIX_RTT=""
for stack in mem posix; do
    step "msgr bench --stack $stack --sizes $LAT_SIZE (reference)"
    timeout 300 "$MSGR_CLI" bench --stack "$stack" --sizes "$LAT_SIZE" --count "$LAT_ITERS" --warmup 200 \
        | tee "$WORK/msgr.$stack" || status=1
    # table row: size wire_B conns count p50 ...
    v=$(awk -v s="$LAT_SIZE" '$1 == s && NF >= 5 { print $5; exit }' "$WORK/msgr.$stack")
    if [[ "$stack" == mem ]]; then MEM_RTT=$v; else POSIX_RTT=$v; fi
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
verdict() { # verdict RATIO OP LIMIT
    awk -v r="$1" -v op="$2" -v l="$3" 'BEGIN { if (r == "n/a") print "n/a"; else if ((op == "<=" && r + 0 <= l + 0) || (op == ">=" && r + 0 >= l + 0)) print "met"; else print "MISSED" }'
}
RTT_REF=$(awk -v t="$LAT_TYPICAL" 'BEGIN { if (t == "") print ""; else printf "%.2f", 2 * t }')
RTT_RATIO=$(ratio "$MSGR_RTT" "$RTT_REF")
BW_RATIO=$(ratio "$MSGR_BW" "$SEND_BW")
WBW_RATIO=$(ratio "$MSGR_BW" "$WRITE_BW")
{
    echo "RDMA comparison on $DEV, best of $ROUNDS interleaved rounds (soft-RoCE under emulation: ratios matter, absolute numbers do not)"
    printf '%-34s %12s %12s %8s  %s\n' "what" "msgr" "perftest" "ratio" "target"
    printf '%-34s %12s %12s %8s  %s\n' "round trip 64 B, p50 (us)" "${MSGR_RTT:-n/a}" "${RTT_REF:-n/a}" \
        "$RTT_RATIO" "<= 1.5 x (2 x ib_send_lat t_typical): $(verdict "$RTT_RATIO" '<=' 1.5)"
    printf '%-34s %12s %12s %8s  %s\n' "throughput 1 MiB (MiB/s)" "${MSGR_BW:-n/a}" "${SEND_BW:-n/a}" \
        "$BW_RATIO" ">= 0.7 x ib_send_bw: $(verdict "$BW_RATIO" '>=' 0.7)"
    printf '%-34s %12s %12s %8s  %s\n' "throughput 1 MiB vs ib_write_bw" "${MSGR_BW:-n/a}" "${WRITE_BW:-n/a}" \
        "$WBW_RATIO" "(upper bound, no target)"
    echo "for scale, same guest: msgr round trip 64 B p50 (us): protocol alone (--stack mem) ${MEM_RTT:-n/a}," \
        "over kernel TCP (--stack posix) ${POSIX_RTT:-n/a}, over RDMA (--stack rdma) ${MSGR_RTT:-n/a}"
    [[ -z "$CEPH_FIGURES" ]] || echo "wires: $CEPH_FIGURES"
} | tee "$WORK/report"
if [[ -n "$REPORT" ]]; then
    cp "$WORK/report" "$REPORT"
fi
exit "$status"
