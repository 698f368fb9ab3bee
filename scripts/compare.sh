#!/usr/bin/env bash
# scripts/compare.sh — msgr bench beside the tools people already trust, in ONE run on this machine:
#   sockperf ping-pong (TCP, loopback, --full-rtt: round trips, not sockperf's default half round trip)
#   iperf3 (TCP, loopback, one connection, writes of SIZE bytes)
#   msgr bench (posix): latency mode against sockperf, throughput mode against iperf3, each under every
#   session policy of --policies (default lossy,lossless,lossless-peer,lossy-spin), and 64 B streaming
#   with window 64 against iperf3 -l 64. lossy-spin is lossy with both ends' workers polling
#   --spin-us (default 50) µs after their work before sleeping (msgr bench --spin-us): the cost of
#   waking a sleeping thread, which dominates on VMs, taken out at the price of CPU
# on the same message sizes, every server pinned to one CPU and every client to another (taskset), each
# measurement repeated --reps times (default 5) with the tools interleaved, reporting the median run and
# the spread (min..max over the repetitions), msgr's CPU µs per message on each side, and the commit and
# 1-minute load average beside every figure. With strace: syscalls per message of a lossless 64 B
# ping-pong, beside its frames per round trip (msgr's frame counters, in the bench JSON). Fan-in: --fanin
# session counts (default 256,10000; none skips it), each with one 64 B message in flight into one server
# worker, interleaved in every repetition: aggregate msgs/s, CPU per message, server RSS per idle session,
# and, over a steady-state window, the kernel's TCP segments and delayed ACKs per message (its targets:
# the largest count >= 0.8x the smallest's msgs/s, <= 8 KiB per idle session). DPDK and RDMA rows (msgr
# --stack dpdk|rdma, perftest) join when those stacks exist.
#
# Prints a side-by-side table and writes DIR/compare.json (each tool's figures per size and run, versions,
# machine, load average around every run, and the ratios msgr/sockperf for RTT p50 and p99 and
# msgr/iperf3 for throughput), DIR/compare.md (the table), and msgr's own plots of its median runs
# (DIR/msgr-latency.svg, DIR/msgr-throughput.svg). Every process it starts is stopped by its PID.
#
# Usage: scripts/compare.sh [--sizes 64,4k,64k,1m] [--reps 5] [--secs 3] [--server-cpu 1] [--client-cpu 0]
#                           [--window 16] [--policies lossy,lossless,lossless-peer,lossy-spin]
#                           [--spin-us 50] [--fanin 256,10000|none] [--out DIR]
#                           [--msgr PATH] [--report-only] [--rdma] [--dpdk]
# Fewer than 5 repetitions (e.g. --reps 1 --secs 1 to try the script) are allowed, with a warning.
# --report-only redoes the table, compare.json and plots from DIR/raw of an earlier run.
# --dpdk adds the DPDK rows: msgr bench --stack dpdk over net_memif (server child process) and over
# net_tap (against a kernel-TCP server; needs root, else skipped) in every repetition, right after the
# posix msgr run, on the same sizes and CPUs; the ratios dpdk/posix for RTT p50 and throughput; and
# syscalls per message in steady state (strace -c -f on the server process over a window in the middle
# of a 64 B ping-pong and of a 64 KiB stream; per message the server received), posix vs dpdk memif;
# and the 64 B stream (window 64) over memif beside the protocol alone (`cargo bench --bench proto`,
# 64 B window 64 lossless, on the client's CPU) in every repetition: its target is >= 1.5 M msgs/s and
# >= 0.5x the protocol alone.
# msgr is then built with --features dpdk (the posix rows use the same binary). Needs the packages
# ci/test.sh's dpdk phase installs, and strace (else the syscall rows are skipped, saying so). The DPDK
# rows run --policy lossy.
# Written to compare.json ("dpdk") and appended to compare.md.
# --rdma adds the RDMA rows: `msgr bench --stack rdma` over soft-RoCE beside ib_send_lat / ib_send_bw /
# ib_write_bw (msgr built here with --features rdma), --reps
# interleaved rounds in ONE qemu guest (scripts/softroce-vm.sh + scripts/rdma-checks.sh; needs the
# packages ci/test.sh's rdma phase installs); written to DIR/rdma.txt and appended to DIR/compare.md.
# Needs: sockperf, iperf3, python3 (ci/test.sh installs sockperf and iperf3; `apt-get install sockperf
# iperf3`), and a release build of msgr (built here unless --msgr PATH is given).
# sockperf's TCP messages stop at 1 MiB - 1 byte: its 1m row uses 1048575-byte messages.
# Absolute numbers depend on the machine and on whatever else runs on it (the load average is recorded
# beside every figure); the ratios are the point.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SIZES="64,4k,64k,1m"
REPS=5
SECS=3
POLICIES="lossy,lossless,lossless-peer,lossy-spin"
SPIN_US=50
SERVER_CPU=1
CLIENT_CPU=0
WINDOW=16
OUT="target/compare"
FANIN="256,10000"
MSGR=""
REPORT_ONLY=0
RDMA=0
DPDK=0

usage() {
    sed -n '2,52p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

while (($#)); do
    case "$1" in
    --sizes) SIZES="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    --secs) SECS="$2"; shift 2 ;;
    --server-cpu) SERVER_CPU="$2"; shift 2 ;;
    --client-cpu) CLIENT_CPU="$2"; shift 2 ;;
    --window) WINDOW="$2"; shift 2 ;;
    --policies) POLICIES="$2"; shift 2 ;;
    --fanin) FANIN="$2"; shift 2 ;;
    --spin-us) SPIN_US="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --msgr) MSGR="$2"; shift 2 ;;
    --report-only) REPORT_ONLY=1; shift ;;
    --rdma) RDMA=1; shift ;;
    --dpdk) DPDK=1; shift ;;
    --rados) shift; exec "$(dirname "${BASH_SOURCE[0]}")/compare-rados.sh" "$@" ;; # RADOS client vs librados
    -h | --help) usage 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; usage 2 ;;
    esac
done
if ! [[ "$REPS" =~ ^[0-9]+$ ]] || ((REPS < 1)); then
    echo "compare.sh: --reps must be a number, at least 1" >&2
    exit 2
fi
if ((REPS < 5)); then
    echo "compare.sh: warning: $REPS repetitions; the figures to quote are medians of at least 5" >&2
fi
IFS=',' read -r -a POLICY_LIST <<<"$POLICIES"
FANIN_LIST=()
if [[ "$FANIN" != none ]]; then
    IFS=',' read -r -a FANIN_LIST <<<"$FANIN"
    for n in "${FANIN_LIST[@]}"; do
        if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
            echo "compare.sh: --fanin takes session counts like 256,10000 (or none), not $FANIN" >&2
            exit 2
        fi
    done
fi
for policy in "${POLICY_LIST[@]}"; do
    case "$policy" in
    lossy | lossless | lossless-peer | lossy-spin) ;;
    *) echo "compare.sh: unknown policy $policy (lossy, lossless, lossless-peer, lossy-spin)" >&2; exit 2 ;;
    esac
done

for tool in sockperf iperf3 python3 taskset; do
    if ! command -v "$tool" >/dev/null; then
        echo "compare.sh: $tool is not installed (apt-get install sockperf iperf3 python3 util-linux)" >&2
        exit 1
    fi
done

if [[ -z "$MSGR" ]]; then
    if ((DPDK)); then
        echo "==> cargo build --release --features dpdk --bin msgr" >&2
        cargo build --release --features dpdk --bin msgr >&2
    else
        echo "==> cargo build --release --bin msgr" >&2
        cargo build --release --bin msgr >&2
    fi
    MSGR="target/release/msgr"
fi
# Run a copy: `cargo bench` (the protocol-alone rows) rebuilds target/release/msgr without the dpdk feature.
mkdir -p "$OUT"
if [[ "$MSGR" != "$OUT/msgr" ]]; then
    cp "$MSGR" "$OUT/msgr"
    MSGR="$OUT/msgr"
fi
STRACE=1
if ! command -v strace >/dev/null; then
    echo "compare.sh: strace is not installed (apt-get install strace): no syscall rows" >&2
    STRACE=0
fi

RAW="$OUT/raw"
mkdir -p "$RAW"
if ((!REPORT_ONLY)); then
    rm -f "$RAW"/*
fi

# Every background process this script starts, stopped by PID on any exit.
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT

stop_pid() {
    local pid="$1"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits until something listens on port $1 (up to 10 s). It reads /proc/net/tcp rather than connecting:
# a probe connection would be taken by `iperf3 -s -1` as its one test.
wait_listen() {
    local port="$1" i hex
    hex=$(printf '%04X' "$port")
    for ((i = 0; i < 200; i++)); do
        if awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" { found = 1 } END { exit !found }' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    echo "compare.sh: nothing listens on port $port" >&2
    return 1
}

bytes_of() {
    case "$1" in
    *k | *K) echo $((${1%[kK]} * 1024)) ;;
    *m | *M) echo $((${1%[mM]} * 1048576)) ;;
    *) echo "$1" ;;
    esac
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

IFS=',' read -r -a SIZE_LIST <<<"$SIZES"

run_sockperf() { # rep
    local rep="$1" port pid size bytes m
    port=$(free_port)
    # The server must accept the largest message: sockperf's TCP limit is 1 MiB - 1.
    taskset -c "$SERVER_CPU" sockperf server --tcp -i 127.0.0.1 -p "$port" -m 1048575 \
        >"$RAW/sockperf-server-$rep.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_listen "$port"
    for size in "${SIZE_LIST[@]}"; do
        bytes=$(bytes_of "$size")
        m=$bytes
        if ((m > 1048575)); then m=1048575; fi
        if ((m < 14)); then m=14; fi
        echo "load $(loadavg)" >"$RAW/sockperf-$size-$rep.txt"
        taskset -c "$CLIENT_CPU" sockperf ping-pong --tcp -i 127.0.0.1 -p "$port" -m "$m" -t "$SECS" \
            --full-rtt >>"$RAW/sockperf-$size-$rep.txt" 2>&1 || echo "sockperf failed" >>"$RAW/sockperf-$size-$rep.txt"
        echo "msg_bytes $m" >>"$RAW/sockperf-$size-$rep.txt"
        echo "load_end $(loadavg)" >>"$RAW/sockperf-$size-$rep.txt"
    done
    stop_pid "$pid"
}

run_iperf3() { # rep
    local rep="$1" port pid size bytes
    for size in "${SIZE_LIST[@]}"; do
        bytes=$(bytes_of "$size")
        port=$(free_port)
        taskset -c "$SERVER_CPU" iperf3 -s -1 -p "$port" >"$RAW/iperf3-server-$size-$rep.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_listen "$port"
        echo "load $(loadavg)" >"$RAW/iperf3-$size-$rep.load"
        taskset -c "$CLIENT_CPU" iperf3 -c 127.0.0.1 -p "$port" -l "$bytes" -t "$SECS" -J \
            >"$RAW/iperf3-$size-$rep.json" 2>"$RAW/iperf3-$size-$rep.err" || true
        echo "load_end $(loadavg)" >>"$RAW/iperf3-$size-$rep.load"
        stop_pid "$pid"
    done
    # Beside msgr's 64 B stream (window 64): 64-byte writes.
    port=$(free_port)
    taskset -c "$SERVER_CPU" iperf3 -s -1 -p "$port" >"$RAW/iperf3-server-stream64-$rep.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_listen "$port"
    echo "load $(loadavg)" >"$RAW/iperf3-stream64-$rep.load"
    taskset -c "$CLIENT_CPU" iperf3 -c 127.0.0.1 -p "$port" -l 64 -t "$SECS" -J \
        >"$RAW/iperf3-stream64-$rep.json" 2>"$RAW/iperf3-stream64-$rep.err" || true
    echo "load_end $(loadavg)" >>"$RAW/iperf3-stream64-$rep.load"
    stop_pid "$pid"
}

# One `bench serve` serves every policy (the client's decides); lossy-spin gets a server of its own
# whose workers spin too. Files: msgr-POLICY-MODE-REP.json, MODE latency, throughput, or stream64 (64 B,
# window 64).
run_msgr() { # rep
    local rep="$1" policy
    local plain=() spin=()
    for policy in "${POLICY_LIST[@]}"; do
        if [[ "$policy" == lossy-spin ]]; then spin+=("$policy"); else plain+=("$policy"); fi
    done
    if ((${#plain[@]})); then run_msgr_against "$rep" 0 "${plain[@]}"; fi
    if ((${#spin[@]})); then run_msgr_against "$rep" "$SPIN_US" "${spin[@]}"; fi
}

# Starts `msgr bench serve` (one worker, pinned) on a free port; sets BENCH_PORT and BENCH_PID.
start_bench_server() { # log [serve args...]
    local log="$1"
    shift
    BENCH_PORT=$(free_port)
    taskset -c "$SERVER_CPU" "$MSGR" bench serve --bind "127.0.0.1:$BENCH_PORT" --workers 1 --cpus "$SERVER_CPU" \
        "$@" >"$log" 2>&1 &
    BENCH_PID=$!
    PIDS+=("$BENCH_PID")
    wait_listen "$BENCH_PORT"
}

run_msgr_against() { # rep spin_us policy...
    local rep="$1" spin_us="$2" mode policy
    shift 2
    start_bench_server "$RAW/msgr-server-$rep-spin$spin_us.log" --spin-us "$spin_us"
    local port="$BENCH_PORT" pid="$BENCH_PID"
    for policy in "$@"; do
        for mode in latency throughput stream64; do
            local args=(--mode "$mode" --sizes "$SIZES")
            if [[ "$mode" == throughput ]]; then args+=(--window "$WINDOW"); fi
            if [[ "$mode" == stream64 ]]; then args=(--mode throughput --sizes 64 --window 64); fi
            local tag="$policy-$mode-$rep"
            taskset -c "$CLIENT_CPU" "$MSGR" bench run "127.0.0.1:$port" --policy "${policy%-spin}" \
                --spin-us "$spin_us" "${args[@]}" \
                --duration "$SECS" --workers 1 --client-cpus "$CLIENT_CPU" \
                --json "$RAW/msgr-$tag.json" --svg "$RAW/msgr-$tag.svg" \
                >"$RAW/msgr-$tag.txt" 2>&1 || echo "msgr failed" >>"$RAW/msgr-$tag.txt"
        done
    done
    stop_pid "$pid"
}

# ---- DPDK rows (--dpdk) ----------------------------------------------------------------------------
# The memif link of the syscall runs (the one-command form builds its own).
memif_end() { # server|client socket
    local ip=198.18.0.2 role=client
    if [[ "$1" == server ]]; then ip=198.18.0.1 role=server; fi
    echo "ip=$ip/24 --no-huge -m 256 --no-pci --log-level=lib.eal:warning --log-level=pmd.net.memif:critical" \
        "--vdev=net_memif0,role=$role,id=0,socket=$2,socket-abstract=yes"
}

run_msgr_dpdk() { # rep
    local rep="$1" link mode
    local links=(memif)
    if ((EUID == 0)); then links+=(tap); fi
    for link in "${links[@]}"; do
        for mode in latency throughput stream64; do
            local extra=() sizes="$SIZES" bench_mode="$mode"
            if [[ "$mode" == throughput ]]; then extra=(--window "$WINDOW"); fi
            # Beside posix's 64 B stream (window 64), memif only.
            if [[ "$mode" == stream64 ]]; then
                if [[ "$link" != memif ]]; then continue; fi
                extra=(--window 64) sizes=64 bench_mode=throughput
            fi
            echo "load $(loadavg)" >"$RAW/dpdk-$link-$mode-$rep.load"
            "$MSGR" bench --stack dpdk --dpdk-link "$link" --mode "$bench_mode" --sizes "$sizes" \
                --duration "$SECS" --workers 1 --client-cpus "$CLIENT_CPU" --server-cpus "$SERVER_CPU" \
                "${extra[@]}" --json "$RAW/dpdk-$link-$mode-$rep.json" \
                >"$RAW/dpdk-$link-$mode-$rep.txt" 2>&1 || echo "msgr failed" >>"$RAW/dpdk-$link-$mode-$rep.txt"
        done
    done
}

# The protocol alone (two in-memory Connections, one thread: `cargo bench --bench proto`, 64 B window
# 64 lossless), pinned to the client's CPU, in the same repetition as the memif stream it is the bar of.
PROTO_EST="${CARGO_TARGET_DIR:-target}/criterion/stream/64B_window64_lossless/new/estimates.json"
run_proto_alone() { # rep
    local rep="$1"
    echo "load $(loadavg)" >"$RAW/proto-stream64-$rep.load"
    rm -f "$PROTO_EST"
    if taskset -c "$CLIENT_CPU" cargo bench --bench proto -- --warm-up-time 1 --measurement-time "$SECS" \
        --noplot 'stream/64B_window64_lossless' >"$RAW/proto-stream64-$rep.txt" 2>&1 && [[ -f "$PROTO_EST" ]]; then
        cp "$PROTO_EST" "$RAW/proto-stream64-$rep.json"
    else
        echo "proto bench failed" >>"$RAW/proto-stream64-$rep.txt"
    fi
}

# Asks the server (fd 3 is its --stdin-control) for its counters; prints "messages in" of the answer.
server_count() { # log
    local log="$1" before i
    before=$(grep -c '^messages in' "$log" || true)
    # In a subshell: a server that has exited makes the write fail (SIGPIPE) without ending this script.
    if ! (echo count >&3) 2>/dev/null; then
        echo "compare.sh: the server exited before it was asked to count (see $log)" >&2
        echo 0
        return 0
    fi
    for ((i = 0; i < 200; i++)); do
        if (($(grep -c '^messages in' "$log" || true) > before)); then
            grep '^messages in' "$log" | tail -1 | awk '{print $3}'
            return 0
        fi
        sleep 0.05
    done
    echo "compare.sh: the server did not answer count" >&2
    echo 0
}

# Steady-state counts on the server: a client runs 3 windows of MODE at SIZE; over the middle one
# MEASURE (a function: tag, server PID, window seconds; it returns when the window ends) watches, and the
# server's own counter says how many messages it received meanwhile (RAW/TAG.count).
windowed_run() { # measure tag stack mode size policy [client args...]
    local measure="$1" tag="$2" stack="$3" mode="$4" size="$5" policy="$6" win=$((SECS > 2 ? SECS : 2))
    shift 6
    local log="$RAW/$tag.server" fifo="$RAW/$tag.ctl" sock="/msgr-compare-$$"
    local server=() client=() spid cpid c0 c1
    local extra=("$@")
    if [[ "$mode" == throughput ]]; then extra+=(--window "$WINDOW"); fi
    rm -f "$fifo"
    mkfifo "$fifo"
    if [[ "$stack" == posix ]]; then
        local port
        port=$(free_port)
        server=(bench serve --bind "127.0.0.1:$port")
        client=(bench run "127.0.0.1:$port")
    else
        server=(bench serve --stack dpdk --dpdk-args "$(memif_end server "$sock")")
        client=(bench run "v2:198.18.0.1:6800/0" --stack dpdk --dpdk-args "$(memif_end client "$sock")")
    fi
    taskset -c "$SERVER_CPU" "$MSGR" "${server[@]}" --workers 1 --cpus "$SERVER_CPU" --stdin-control \
        <"$fifo" >"$log" 2>&1 &
    spid=$!
    PIDS+=("$spid")
    exec 3>"$fifo"
    local i
    for ((i = 0; i < 600; i++)); do
        if grep -q 'listening on' "$log"; then break; fi
        sleep 0.05
    done
    taskset -c "$CLIENT_CPU" "$MSGR" "${client[@]}" --policy "$policy" --mode "$mode" --sizes "$size" --warmup 100 \
        --duration $((3 * win)) --workers 1 --client-cpus "$CLIENT_CPU" "${extra[@]}" \
        >"$RAW/$tag.client" 2>&1 &
    cpid=$!
    PIDS+=("$cpid")
    sleep "$win"
    c0=$(server_count "$log")
    "$measure" "$tag" "$spid" "$win"
    c1=$(server_count "$log")
    echo "messages $((c1 - c0)) window_s $win" >"$RAW/$tag.count"
    wait "$cpid" 2>/dev/null || true
    # End of its stdin stops the server cleanly (the DPDK one removes its EAL state); kill only a laggard.
    exec 3>&-
    for ((i = 0; i < 200; i++)); do
        if ! kill -0 "$spid" 2>/dev/null; then break; fi
        sleep 0.05
    done
    stop_pid "$spid"
    rm -f "$fifo"
}

strace_window() { # tag spid win
    timeout -s INT "$3" strace -c -f -p "$2" -o "$RAW/$1.strace" 2>/dev/null || true
}

# The kernel's TCP counters (both ends: loopback), as `name value` lines.
tcp_counters() {
    awk '$1 == "Tcp:" || $1 == "TcpExt:" {
             if (!($1 in names)) { names[$1] = $0; next }
             split(names[$1], n); for (i = 2; i <= NF; i++) print n[i], $i
         }' /proc/net/snmp /proc/net/netstat
}

tcp_window() { # tag spid win
    tcp_counters >"$RAW/$1.tcp-before"
    sleep "$3"
    tcp_counters >"$RAW/$1.tcp-after"
}

# Syscalls per message on the server in steady state (strace -c -f over the middle window).
syscall_run() { # stack mode size [policy]
    local tag="syscalls-$1-$2-$3" policy="${4:-lossy}"
    if [[ "$policy" != lossy ]]; then tag="syscalls-$1-$policy-$2-$3"; fi
    windowed_run strace_window "$tag" "$1" "$2" "$3" "$policy"
}

# Fan-in: N sessions with one 64 B message in flight each into one server worker, the session counts
# interleaved in every repetition. Files: fanin-N-REP.json.
run_fanin() { # rep
    local rep="$1" n
    for n in "${FANIN_LIST[@]}"; do
        start_bench_server "$RAW/fanin-server-$n-$rep.log"
        taskset -c "$CLIENT_CPU" "$MSGR" bench run "127.0.0.1:$BENCH_PORT" --mode fanin --sizes 64 --connections "$n" \
            --duration "$SECS" --workers 1 --client-cpus "$CLIENT_CPU" --json "$RAW/fanin-$n-$rep.json" \
            >"$RAW/fanin-$n-$rep.txt" 2>&1 || echo "msgr failed" >>"$RAW/fanin-$n-$rep.txt"
        stop_pid "$BENCH_PID"
    done
}

((REPORT_ONLY)) || echo "==> $(date -u +%FT%TZ) $(nproc) CPUs, load $(loadavg); server CPU $SERVER_CPU, client CPU $CLIENT_CPU;" \
    "sizes $SIZES, $REPS repetitions of ${SECS}s per size and tool" >&2
if ((REPORT_ONLY)); then
    # shellcheck disable=SC1091 # written by the run being reported
    source "$RAW/meta.env"
else
    START_LOAD=$(loadavg)
    for ((rep = 1; rep <= REPS; rep++)); do
        echo "==> repetition $rep/$REPS: sockperf" >&2
        run_sockperf "$rep"
        echo "==> repetition $rep/$REPS: iperf3" >&2
        run_iperf3 "$rep"
        echo "==> repetition $rep/$REPS: msgr bench" >&2
        run_msgr "$rep"
        if ((${#FANIN_LIST[@]})); then
            echo "==> repetition $rep/$REPS: msgr bench --mode fanin (${FANIN_LIST[*]} sessions)" >&2
            run_fanin "$rep"
        fi
        if ((DPDK)); then
            echo "==> repetition $rep/$REPS: msgr bench --stack dpdk" >&2
            run_msgr_dpdk "$rep"
            run_proto_alone "$rep"
        fi
    done
    for n in "${FANIN_LIST[@]}"; do
        echo "==> TCP segments per message: fan-in, $n sessions" >&2
        windowed_run tcp_window "tcp-fanin-$n" posix fanin 64 lossy --connections "$n"
    done
    if ((STRACE)); then
        echo "==> syscalls per message: posix lossless latency 64" >&2
        syscall_run posix latency 64 lossless
    fi
    if ((DPDK && STRACE)); then
        for stack in posix dpdk; do
            for mode in latency:64 throughput:64k; do
                echo "==> syscalls per message: $stack ${mode%%:*} ${mode##*:}" >&2
                syscall_run "$stack" "${mode%%:*}" "${mode##*:}"
            done
        done
    fi
    END_LOAD=$(loadavg)
    printf 'START_LOAD="%s"\nEND_LOAD="%s"\nPOLICIES="%s"\nFANIN="%s"\n' "$START_LOAD" "$END_LOAD" \
        "$POLICIES" "$FANIN" >"$RAW/meta.env"
fi

SOCKPERF_VERSION=$(sockperf --version 2>&1 | grep -m1 -o 'version [^ ]*' || true)
IPERF3_VERSION=$(iperf3 --version 2>&1 | head -1)
MSGR_VERSION=$("$MSGR" --version 2>&1 | head -1)

PYTHONPATH=scripts python3 - "$OUT" "$RAW" "$SIZES" "$REPS" "$SECS" "$SERVER_CPU" "$CLIENT_CPU" "$WINDOW" \
    "$SOCKPERF_VERSION" "$IPERF3_VERSION" "$MSGR_VERSION" "$START_LOAD" "$END_LOAD" "$POLICIES" <<'PY'
import json, os, re, shutil, statistics, sys, platform
from compare_lib import fmt, median_run, nbytes, spread, strace_window

(out, raw, sizes, reps, secs, server_cpu, client_cpu, window,
 sockperf_v, iperf3_v, msgr_v, start_load, end_load, policies) = sys.argv[1:]
sizes = sizes.split(",")
reps = int(reps)
policies = policies.split(",")


def loads(text):
    got = {}
    for key in ("load", "load_end"):
        m = re.search(r"^%s ([\d.]+) ([\d.]+) ([\d.]+)" % key, text, re.M)
        if m:
            got[key] = [float(x) for x in m.groups()]
    return got


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def sockperf_run(size, rep):
    text = read(f"{raw}/sockperf-{size}-{rep}.txt")
    pct = {}
    for m in re.finditer(r"percentile (\d+\.\d+) =\s+([\d.]+)", text):
        pct[float(m.group(1))] = float(m.group(2))
    mx = re.search(r"<MAX> observation =\s+([\d.]+)", text)
    obs = re.search(r"Total (\d+) observations", text)
    msg = re.search(r"^msg_bytes (\d+)", text, re.M)
    if 50.0 not in pct or 99.0 not in pct:
        return {"error": (text.strip().splitlines() or ["no output"])[-1][:200], **loads(text)}
    return {"p50_us": pct[50.0], "p99_us": pct[99.0], "p999_us": pct.get(99.9),
            "max_us": float(mx.group(1)) if mx else None,
            "observations": int(obs.group(1)) if obs else None,
            "msg_bytes": int(msg.group(1)) if msg else None, **loads(text)}


def iperf3_run(size, rep):
    ld = loads(read(f"{raw}/iperf3-{size}-{rep}.load"))
    try:
        with open(f"{raw}/iperf3-{size}-{rep}.json") as f:
            d = json.load(f)
        end = d["end"]
        return {"gbit_per_sec": end["sum_received"]["bits_per_second"] / 1e9,
                "sender_gbit_per_sec": end["sum_sent"]["bits_per_second"] / 1e9,
                "write_bytes": nbytes(size if size != "stream64" else "64"), **ld}
    except (OSError, KeyError, ValueError) as e:
        err = read(f"{raw}/iperf3-{size}-{rep}.err").strip() or str(e)
        return {"error": err[:200], **ld}


def msgr_runs(policy, mode, rep):
    names = [f"msgr-{policy}-{mode}-{rep}"]
    if policy == "lossy":
        names.append(f"msgr-{mode}-{rep}")  # a raw directory from before --policy
    for name in names:
        try:
            with open(f"{raw}/{name}.json") as f:
                return json.load(f), None, name
        except (OSError, ValueError):
            pass
    tail = read(f"{raw}/{names[0]}.txt").strip().splitlines()
    return None, (tail[-1] if tail else "no output")[:200], names[0]


def cpu_sum(r, side):
    u, s = r.get(f"{side}_user_us_per_msg"), r.get(f"{side}_sys_us_per_msg")
    return None if u is None or s is None else u + s


result = {"machine": {}, "settings": {}, "versions": {}, "sizes": []}
cpu_model = None
for line in read("/proc/cpuinfo").splitlines():
    if line.startswith("model name"):
        cpu_model = line.split(":", 1)[1].strip()
        break
result["machine"] = {"cpu_model": cpu_model, "cpus": os.cpu_count(), "kernel": platform.release(),
                     "load_start": [float(x) for x in start_load.split()],
                     "load_end": [float(x) for x in end_load.split()]}
result["settings"] = {"sizes": sizes, "reps": reps, "secs_per_run": float(secs),
                      "server_cpu": int(server_cpu), "client_cpu": int(client_cpu),
                      "msgr_window": int(window), "msgr_workers": 1,
                      "pinning": f"taskset -c {server_cpu} for every server, taskset -c {client_cpu} "
                                 "for every client; msgr workers pinned to the same CPUs"}
result["versions"] = {"sockperf": sockperf_v, "iperf3": iperf3_v, "msgr": msgr_v}

# msgr[policy][mode][msg_size] = runs; mode latency, throughput or stream64.
msgr = {p: {m: {} for m in ("latency", "throughput", "stream64")} for p in policies}
svg_of = {}
header = None
for rep in range(1, reps + 1):
    for policy in policies:
        for mode, store in msgr[policy].items():
            d, err, name = msgr_runs(policy, mode, rep)
            if d is None:
                for s in (sizes if mode != "stream64" else ["64"]):
                    store.setdefault(nbytes(s), []).append({"rep": rep, "error": err})
                continue
            header = header or d["header"]
            h = d["header"]
            svg_of[(policy, mode, rep)] = f"{raw}/{name}.svg"
            for r in d["results"]:
                store.setdefault(r["msg_size"], []).append({
                    "rep": rep, "p50_us": r["p50_ns"] / 1e3, "p99_us": r["p99_ns"] / 1e3,
                    "p999_us": r["p999_ns"] / 1e3, "p9999_us": r.get("p9999_ns", 0) / 1e3,
                    "max_us": r["max_ns"] / 1e3, "count": r["count"],
                    "msgs_per_sec": r["msgs_per_sec"], "gbit_per_sec": r["gbit_per_sec"],
                    "wire_bytes": r["wire_bytes"], "load": h.get("loadavg_start"),
                    "load_end": h.get("loadavg_end"), "commit": h.get("git_commit"),
                    "policy": h.get("policy", "lossy"), "server_policy": h.get("server_policy"),
                    "client_cpu_us_per_msg": cpu_sum(r, "client"),
                    "server_cpu_us_per_msg": cpu_sum(r, "server"),
                    "client_user_us_per_msg": r.get("client_user_us_per_msg"),
                    "client_sys_us_per_msg": r.get("client_sys_us_per_msg"),
                    "server_user_us_per_msg": r.get("server_user_us_per_msg"),
                    "server_sys_us_per_msg": r.get("server_sys_us_per_msg"),
                    "client_frames_out_per_msg": r.get("client_frames_out_per_msg"),
                    "client_frames_in_per_msg": r.get("client_frames_in_per_msg"),
                    "client_acks_out_per_msg": r.get("client_acks_out_per_msg")})
msgr_lat = msgr[policies[0]]["latency"] if "lossy" not in msgr else msgr["lossy"]["latency"]
msgr_tp = msgr[policies[0]]["throughput"] if "lossy" not in msgr else msgr["lossy"]["throughput"]
if header:
    result["versions"]["msgr_commit"] = header.get("git_commit")

best_svg = {}
for s in sizes:
    b = nbytes(s)
    sp = [dict(sockperf_run(s, rep), rep=rep) for rep in range(1, reps + 1)]
    ip = [dict(iperf3_run(s, rep), rep=rep) for rep in range(1, reps + 1)]
    ml = msgr_lat.get(b, [])
    mt = msgr_tp.get(b, [])
    sp_med, sp_spread = median_run(sp, "p50_us")
    ml_med, ml_spread = median_run(ml, "p50_us")
    ip_med, ip_spread = median_run(ip, "gbit_per_sec")
    mt_med, mt_spread = median_run(mt, "gbit_per_sec")
    _, sp99 = median_run(sp, "p99_us")
    _, ml99 = median_run(ml, "p99_us")
    row = {"size": s, "bytes": b,
           "sockperf": {"runs": sp, "median": sp_med, "p50_spread_us": sp_spread, "p99_spread_us": sp99},
           "iperf3": {"runs": ip, "median": ip_med, "gbit_spread": ip_spread},
           "msgr_latency": {"runs": ml, "median": ml_med, "p50_spread_us": ml_spread, "p99_spread_us": ml99},
           "msgr_throughput": {"runs": mt, "median": mt_med, "gbit_spread": mt_spread},
           "policies": {}, "ratios": {}}
    for policy in policies:
        pl, pl_spread = median_run(msgr[policy]["latency"].get(b, []), "p50_us")
        pt, pt_spread = median_run(msgr[policy]["throughput"].get(b, []), "gbit_per_sec")
        row["policies"][policy] = {"latency": pl, "p50_spread_us": pl_spread,
                                   "throughput": pt, "gbit_spread": pt_spread}
        lossy = row["policies"].get("lossy")
        if policy != "lossy" and lossy:
            if pl and lossy["latency"]:
                row["ratios"][f"rtt_p50_{policy}_over_lossy"] = pl["p50_us"] / lossy["latency"]["p50_us"]
            if pt and lossy["throughput"]:
                row["ratios"][f"throughput_{policy}_over_lossy"] = (
                    pt["gbit_per_sec"] / lossy["throughput"]["gbit_per_sec"])
    if sp_med and ml_med:
        row["ratios"]["rtt_p50_msgr_over_sockperf"] = ml_med["p50_us"] / sp_med["p50_us"]
        row["ratios"]["rtt_p99_msgr_over_sockperf"] = ml_med["p99_us"] / sp_med["p99_us"]
    if ip_med and mt_med:
        row["ratios"]["throughput_msgr_over_iperf3"] = mt_med["gbit_per_sec"] / ip_med["gbit_per_sec"]
    result["sizes"].append(row)
    for mode, med in (("latency", ml_med), ("throughput", mt_med)):
        if med:
            best_svg.setdefault(mode, {})[b] = med["rep"]

# 64 B streaming, window 64, beside iperf3 -l 64 (payload rates).
ip64 = [dict(iperf3_run("stream64", rep), rep=rep) for rep in range(1, reps + 1)]
ip64_med, ip64_spread = median_run(ip64, "gbit_per_sec")
result["stream64"] = {"iperf3": {"runs": ip64, "median": ip64_med, "gbit_spread": ip64_spread},
                      "policies": {}, "ratios": {}}
for policy in policies:
    med, sp = median_run(msgr[policy]["stream64"].get(64, []), "msgs_per_sec")
    result["stream64"]["policies"][policy] = {"runs": msgr[policy]["stream64"].get(64, []),
                                              "median": med, "msgs_spread": sp}
    if med and ip64_med:
        result["stream64"]["ratios"][f"{policy}_over_iperf3"] = med["gbit_per_sec"] / ip64_med["gbit_per_sec"]

# msgr's own plots (lossy, else the first policy) of the run that gave the median at the largest size.
main_policy = "lossy" if "lossy" in policies else policies[0]
for mode, by_size in best_svg.items():
    rep = by_size[max(by_size)]
    src = svg_of.get((main_policy, mode, rep), "")
    if os.path.exists(src):
        shutil.copyfile(src, f"{out}/msgr-{mode}.svg")

targets = {}
for row in result["sizes"]:
    if row["bytes"] == 64 and "rtt_p50_msgr_over_sockperf" in row["ratios"]:
        r = row["ratios"]["rtt_p50_msgr_over_sockperf"]
        targets["rtt_p50_64B"] = {"ratio": r, "target": "<= 1.3", "met": r <= 1.3}
    if row["bytes"] == 1 << 20 and "throughput_msgr_over_iperf3" in row["ratios"]:
        r = row["ratios"]["throughput_msgr_over_iperf3"]
        targets["throughput_1MiB"] = {"ratio": r, "target": ">= 0.8", "met": r >= 0.8}
for row in result["sizes"]:
    r = row["ratios"]
    if row["bytes"] == 64 and "rtt_p50_lossless_over_lossy" in r:
        v = r["rtt_p50_lossless_over_lossy"]
        targets["lossless_rtt_p50_64B"] = {"ratio": v, "target": "<= 1.05 x lossy", "met": v <= 1.05}
    if row["bytes"] == 1 << 20 and "throughput_lossless_over_lossy" in r:
        v = r["throughput_lossless_over_lossy"]
        targets["lossless_throughput_1MiB"] = {"ratio": v, "target": ">= 0.95 x lossy", "met": v >= 0.95}
for name, policy in (("stream64_posix", main_policy), ("stream64_posix_spin", "lossy-spin")):
    v = result["stream64"]["ratios"].get(f"{policy}_over_iperf3")
    if v is not None:
        targets[name] = {"ratio": v, "target": ">= 1.0 x iperf3 -l 64", "met": v >= 1.0}
result["targets"] = targets

with open(f"{out}/compare.json", "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")


def load1(run):
    ld = run and run.get("load")
    return "-" if not ld else f"{ld[0]:.1f}"


def commit(run):
    c = run and run.get("commit")
    return c[:10] if c else "-"


def cpu(run):
    """client/server CPU µs per message, user + system."""
    if not run:
        return "-"
    return "{}/{}".format(fmt(run.get("client_cpu_us_per_msg"), ".2f"),
                          fmt(run.get("server_cpu_us_per_msg"), ".2f"))


def frames_of_lossless_pingpong():
    runs = msgr.get("lossless", {}).get("latency", {}).get(64, [])
    med, _ = median_run(runs, "p50_us")
    if not med or med.get("client_frames_out_per_msg") is None:
        return {"frames_per_message": None}
    out_, in_ = med["client_frames_out_per_msg"], med["client_frames_in_per_msg"]
    return {"frames_per_message": out_ + in_, "client_frames_out_per_msg": out_,
            "client_frames_in_per_msg": in_, "client_acks_out_per_msg": med["client_acks_out_per_msg"],
            "frames_rep": med["rep"]}


# Syscalls per message of a lossless 64 B ping-pong on the server (strace -c -f over a window).
def syscalls(tag):
    got = strace_window(raw, f"syscalls-{tag}")
    # From the bench's own lossless 64 B latency runs (the client messenger's frame counters): frames
    # each way per round trip, and the bare ACKs among the client's.
    return got and {**got, **frames_of_lossless_pingpong()}


sc = syscalls("posix-lossless-latency-64")
if sc:
    result["syscalls_lossless_pingpong_64"] = sc
    with open(f"{out}/compare.json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

lines = []
lines.append(f"Round trip, µs (median of {reps} runs, [min..max of p50]; CPU = µs per message, user + system, "
             "msgr client/server; load = 1-minute load average at the run's start; commit = msgr's)")
lines.append("| size | policy | sockperf p50 | msgr p50 | msgr p99 | p50 ratio | vs lossy | msgr p50 spread | "
             "CPU c/s | load sp/msgr | commit |")
lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for row in result["sizes"]:
    sp, r = row["sockperf"]["median"], row["ratios"]
    for policy in policies:
        pr = row["policies"][policy]
        ml = pr["latency"]
        ratio = ml and sp and ml["p50_us"] / sp["p50_us"]
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |".format(
            row["size"] + (" (sockperf 1m-1)" if row["bytes"] > 1048575 else ""), policy,
            fmt(sp and sp.get("p50_us")), fmt(ml and ml.get("p50_us")), fmt(ml and ml.get("p99_us")),
            fmt(ratio, ".2f"), fmt(r.get(f"rtt_p50_{policy}_over_lossy"), ".2f"),
            spread(pr["p50_spread_us"]), cpu(ml), load1(sp), load1(ml), commit(ml)))
lines.append("")
lines.append(f"Throughput, one connection, Gbit/s of payload (median of {reps} runs, [min..max]; msgr window {window})")
lines.append("| size | policy | iperf3 | msgr | ratio | vs lossy | msgr spread | msgr msgs/s | CPU c/s | "
             "load ip/msgr | commit |")
lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for row in result["sizes"]:
    ip, r = row["iperf3"]["median"], row["ratios"]
    for policy in policies:
        pr = row["policies"][policy]
        mt = pr["throughput"]
        ratio = mt and ip and mt["gbit_per_sec"] / ip["gbit_per_sec"]
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |".format(
            row["size"], policy, fmt(ip and ip.get("gbit_per_sec"), ".2f"),
            fmt(mt and mt.get("gbit_per_sec"), ".2f"), fmt(ratio, ".2f"),
            fmt(r.get(f"throughput_{policy}_over_lossy"), ".2f"),
            spread(pr["gbit_spread"], ".2f"), fmt(mt and mt.get("msgs_per_sec"), ".0f"), cpu(mt),
            load1(ip), load1(mt), commit(mt)))
lines.append("")
st = result["stream64"]
ip = st["iperf3"]["median"]
lines.append(f"64 B streaming, one connection, window 64, beside iperf3 -l 64 (median of {reps} runs; payload rates)")
lines.append("| policy | msgr msgs/s | msgr Gbit/s | iperf3 -l 64 Gbit/s | ratio | msgr msgs/s spread | CPU c/s | "
             "load ip/msgr | commit |")
lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
for policy in policies:
    pr = st["policies"][policy]
    med = pr["median"]
    lines.append("| {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |".format(
        policy, fmt(med and med.get("msgs_per_sec"), ".0f"), fmt(med and med.get("gbit_per_sec"), ".3f"),
        fmt(ip and ip.get("gbit_per_sec"), ".3f"), fmt(st["ratios"].get(f"{policy}_over_iperf3"), ".2f"),
        spread(pr["msgs_spread"], ".0f"), cpu(med), load1(ip), load1(med), commit(med)))
if sc:
    lines.append("")
    lines.append("Lossless 64 B ping-pong, server side, steady state (strace -c -f over a window; per message "
                 "the server received)")
    lines.append("| window s | messages | syscalls | syscalls per message | frames per round trip (client out+in; "
                 "bare ACKs out) | most frequent |")
    lines.append("|---:|---:|---:|---:|---:|---|")
    fr = sc.get("frames_per_message")
    lines.append("| {} | {} | {} | {} | {} | {} |".format(
        sc["window_s"], sc["server_messages"], sc["syscalls"], fmt(sc["per_message"], ".3f"),
        "n/a" if fr is None else "{:.2f} ({:.2f}+{:.2f}; {:.2f})".format(
            fr, sc["client_frames_out_per_msg"], sc["client_frames_in_per_msg"], sc["client_acks_out_per_msg"]),
        ", ".join(f"{n} {c}" for n, c in sc["top"]) or "-"))
lines.append("")
for name, t in targets.items():
    lines.append(f"target {name}: ratio {t['ratio']:.2f} (want {t['target']}): {'met' if t['met'] else 'NOT met'}")
m = result["machine"]
lines.append(f"machine: {m['cpu_model']}, {m['cpus']} CPUs, kernel {m['kernel']}; load {start_load} -> {end_load}")
lines.append(f"versions: {sockperf_v}; {iperf3_v}; {msgr_v} ({result['versions'].get('msgr_commit')})")
text = "\n".join(lines)
print(text)
with open(f"{out}/compare.md", "w") as f:
    f.write(text + "\n")


def bars_svg(path):
    """compare.svg: grouped bars on a log scale, median runs with min..max whiskers; RTT p50 (left),
    throughput (right); the ratios msgr/other under each panel."""
    import math
    W, H, pad_l, pad_b, pad_t = 1040, 470, 70, 80, 80
    panel_w = (W - 2 * pad_l) // 2 - 30
    plot_h = H - pad_b - pad_t
    colors = {"sockperf": "#ff7f0e", "iperf3": "#2ca02c", "msgr": "#1f77b4"}
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">msgr bench (posix) beside '
           f'sockperf and iperf3: median of {reps} runs (whiskers: min..max), loopback, pinned</text>']
    for k, name in enumerate(["sockperf", "iperf3", "msgr"]):
        lx = W / 2 - 150 + k * 110
        svg.append(f'<rect x="{lx}" y="34" width="12" height="12" fill="{colors[name]}"/>')
        svg.append(f'<text x="{lx + 16}" y="45">{name}</text>')

    def panel(x0, title, unit, series, ratio_key, fmt_v):
        vals = [x for _, pts in series for (_, v, lo, hi) in pts for x in (v, lo, hi) if x]
        lo_exp = math.floor(math.log10(min(vals))) if vals else 0
        hi_exp = math.ceil(math.log10(max(vals) * 1.3)) if vals else 1
        if hi_exp <= lo_exp:
            hi_exp = lo_exp + 1
        y0 = pad_t + plot_h

        def y(v):
            return y0 - plot_h * (math.log10(v) - lo_exp) / (hi_exp - lo_exp)

        svg.append(f'<text x="{x0 + panel_w / 2}" y="{pad_t - 12}" text-anchor="middle" '
                   f'font-size="13">{title}</text>')
        for e in range(lo_exp, hi_exp + 1):
            for mult in (1, 2, 5):
                v = mult * 10 ** e
                if e == hi_exp and mult > 1:
                    continue
                yy = y(v)
                svg.append(f'<line x1="{x0}" y1="{yy:.1f}" x2="{x0 + panel_w}" y2="{yy:.1f}" '
                           f'stroke="{"#bbb" if mult == 1 else "#eee"}"/>')
                svg.append(f'<text x="{x0 - 6}" y="{yy + 4:.1f}" text-anchor="end">{fmt_v(v)}</text>')
        svg.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + panel_w}" y2="{y0}" stroke="black"/>')
        svg.append(f'<line x1="{x0}" y1="{pad_t}" x2="{x0}" y2="{y0}" stroke="black"/>')
        svg.append(f'<text transform="translate({x0 - 52},{pad_t + plot_h / 2}) rotate(-90)" '
                   f'text-anchor="middle">{unit} (log scale)</text>')
        gw = panel_w / len(sizes)
        bw = gw / (len(series) + 1)
        for g, size in enumerate(sizes):
            gx = x0 + g * gw
            r = result["sizes"][g]["ratios"].get(ratio_key)
            svg.append(f'<text x="{gx + gw / 2}" y="{y0 + 18}" text-anchor="middle">{size}</text>')
            svg.append(f'<text x="{gx + gw / 2}" y="{y0 + 34}" text-anchor="middle" font-size="11">'
                       f'{"ratio %.2f" % r if r else ""}</text>')
            for k, (name, pts) in enumerate(series):
                _, v, lo, hi = pts[g]
                if not v:
                    continue
                bx = gx + bw * (k + 0.5)
                top = y(v)
                svg.append(f'<rect x="{bx:.1f}" y="{top:.1f}" width="{bw * 0.9:.1f}" '
                           f'height="{y0 - top:.1f}" fill="{colors[name]}"/>')
                cx = bx + bw * 0.45
                if lo and hi:
                    svg.append(f'<line x1="{cx:.1f}" y1="{y(lo):.1f}" x2="{cx:.1f}" y2="{y(hi):.1f}" '
                               f'stroke="black"/>')
                svg.append(f'<text x="{cx:.1f}" y="{min(top, y(hi) if hi else top) - 4:.1f}" '
                           f'text-anchor="middle" font-size="10">{fmt_v(v)}</text>')
        svg.append(f'<text x="{x0 + panel_w / 2}" y="{y0 + 52}" text-anchor="middle">message size '
                   f'(ratio = msgr / {series[0][0]})</text>')

    def pts(tool, key, spread_key):
        got = []
        for row in result["sizes"]:
            med = row[tool]["median"]
            sp = row[tool].get(spread_key)
            got.append((row["size"], med and med.get(key), sp and sp[0], sp and sp[1]))
        return got

    def num(v):
        return f"{v:.0f}" if v >= 1 else f"{v:g}"

    panel(pad_l, "round trip p50, one message in flight", "µs",
          [("sockperf", pts("sockperf", "p50_us", "p50_spread_us")),
           ("msgr", pts("msgr_latency", "p50_us", "p50_spread_us"))],
          "rtt_p50_msgr_over_sockperf", num)
    panel(pad_l * 2 + panel_w + 60, "throughput, one connection (payload)", "Gbit/s",
          [("iperf3", pts("iperf3", "gbit_per_sec", "gbit_spread")),
           ("msgr", pts("msgr_throughput", "gbit_per_sec", "gbit_spread"))],
          "throughput_msgr_over_iperf3", lambda v: f"{v:.2g}" if v < 1 else f"{v:.1f}")
    svg.append(f'<text x="10" y="{H - 8}" font-size="10">{m["cpu_model"]}, {m["cpus"]} CPUs, kernel '
               f'{m["kernel"]}; load average {start_load} at the start, {end_load} at the end; '
               f'{result["versions"]["msgr"]} {str(result["versions"].get("msgr_commit"))[:10]}, '
               f'{sockperf_v.replace("version", "sockperf")}, {iperf3_v}</text>')
    svg.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")


bars_svg(f"{out}/compare.svg")
print(f"\nwrote {out}/compare.json, {out}/compare.md, {out}/compare.svg" +
      "".join(f", {out}/msgr-{m}.svg" for m in best_svg))
PY

# ---- Fan-in report (--fanin) --------------------------------------------------------------------------
if [[ "$FANIN" != none ]]; then
    PYTHONPATH=scripts python3 - "$OUT" "$RAW" "$REPS" "$FANIN" <<'PY'
import json, sys
from compare_lib import fmt, load_json, median_run, spread, tcp_window

out, raw, reps, fanin = sys.argv[1:]
reps = int(reps)
counts = [int(n) for n in fanin.split(",")]


rows = []
for n in counts:
    runs = []
    for rep in range(1, reps + 1):
        d = load_json(f"{raw}/fanin-{n}-{rep}.json")
        if d is None or not d.get("results"):
            continue
        r, h = d["results"][0], d["header"]
        mem = h.get("memory") or {}
        runs.append({"rep": rep, "msgs_per_sec": r["msgs_per_sec"], "p50_us": r["p50_ns"] / 1e3,
                     "p99_us": r["p99_ns"] / 1e3, "count": r["count"],
                     "server_user_us_per_msg": r.get("server_user_us_per_msg"),
                     "server_sys_us_per_msg": r.get("server_sys_us_per_msg"),
                     "client_user_us_per_msg": r.get("client_user_us_per_msg"),
                     "client_sys_us_per_msg": r.get("client_sys_us_per_msg"),
                     "idle_bytes_per_session": mem.get("bytes_per_session"),
                     "load": h.get("loadavg_start"), "commit": h.get("git_commit")})
    med, sp = median_run(runs, "msgs_per_sec")
    mem_med, _ = median_run(runs, "idle_bytes_per_session")
    rows.append({"sessions": n, "runs": runs, "median": med, "msgs_spread": sp,
                 "idle_bytes_per_session": mem_med and mem_med["idle_bytes_per_session"],
                 "tcp": tcp_window(raw, f"tcp-fanin-{n}")})

if not any(row["runs"] for row in rows):
    sys.exit(0)  # a raw directory from before --fanin: nothing to report

targets = {}
lo, hi = min(rows, key=lambda r: r["sessions"]), max(rows, key=lambda r: r["sessions"])
if len(rows) > 1 and lo["median"] and hi["median"]:
    v = hi["median"]["msgs_per_sec"] / lo["median"]["msgs_per_sec"]
    targets[f"fanin_{hi['sessions']}_over_{lo['sessions']}"] = {
        "ratio": v, "target": f">= 0.8 x {lo['sessions']} sessions", "met": v >= 0.8}
if hi["idle_bytes_per_session"] is not None:
    kib = hi["idle_bytes_per_session"] / 1024
    targets[f"fanin_idle_memory_{hi['sessions']}"] = {
        "ratio": kib, "target": "<= 8 KiB per idle session", "met": kib <= 8}

full = load_json(f"{out}/compare.json") or {}
full["fanin"] = {"sessions": rows, "targets": targets}
with open(f"{out}/compare.json", "w") as f:
    json.dump(full, f, indent=2)
    f.write("\n")


def cpu(run, side):
    if not run or run.get(f"{side}_user_us_per_msg") is None:
        return "-"
    return f"{run[f'{side}_user_us_per_msg']:.2f}+{run[f'{side}_sys_us_per_msg']:.2f}"


lines = ["", f"Fan-in: sessions with one 64 B message in flight each into one server worker (median of {reps} "
             "runs, interleaved; CPU = user+system µs per message; TCP = kernel counters over a steady-state "
             "window, per message the server received, both ends)",
         "| sessions | msgs/s | spread | p50 ms | CPU client | CPU server | idle KiB/session | TCP segments "
         "| delayed ACKs | load | commit |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
for row in rows:
    med, tcp = row["median"], row["tcp"] or {}
    lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
        row["sessions"], fmt(med and med["msgs_per_sec"], ".0f"), spread(row["msgs_spread"], ".0f"),
        fmt(med and med["p50_us"] / 1e3, ".2f"), cpu(med, "client"), cpu(med, "server"),
        fmt(row["idle_bytes_per_session"] and row["idle_bytes_per_session"] / 1024, ".1f"),
        fmt(tcp.get("segments_per_message"), ".2f"), fmt(tcp.get("delayed_acks_per_message"), ".2f"),
        fmt(med and med["load"] and med["load"][0], ".1f"), (med and med.get("commit") or "-")[:10]))
lines.append("")
for name, t in targets.items():
    lines.append(f"target {name}: {t['ratio']:.2f} (want {t['target']}): {'met' if t['met'] else 'NOT met'}")
text = "\n".join(lines)
print(text)
with open(f"{out}/compare.md", "a") as f:
    f.write(text + "\n")
PY
fi

# ---- DPDK report (--dpdk) ----------------------------------------------------------------------------
if ((DPDK)); then
    PYTHONPATH=scripts python3 - "$OUT" "$RAW" "$SIZES" "$REPS" "$WINDOW" <<'PY'
import json, statistics, sys
from compare_lib import fmt, load_json, median_run, nbytes, spread, strace_window

out, raw, sizes, reps, window = sys.argv[1:]
reps = int(reps)


def runs_of(prefix, mode):
    """Per size: one entry per repetition from RAW/{prefix}-{mode}-{rep}.json."""
    by_size = {}
    for rep in range(1, reps + 1):
        d = load_json(f"{raw}/{prefix}-{mode}-{rep}.json")
        if d is None:
            continue
        for r in d["results"]:
            by_size.setdefault(r["msg_size"], []).append({
                "rep": rep, "p50_us": r["p50_ns"] / 1e3, "p99_us": r["p99_ns"] / 1e3,
                "gbit_per_sec": r["gbit_per_sec"], "msgs_per_sec": r["msgs_per_sec"],
                "count": r["count"], "link": d["header"].get("link"),
                "load": d["header"].get("loadavg_start")})
    return by_size


rows = {"posix": ("msgr-lossy", "loopback"), "memif": ("dpdk-memif", "memif"), "tap": ("dpdk-tap", "tap")}
data = {}
for name, (prefix, _) in rows.items():
    data[name] = {mode: runs_of(prefix, mode) for mode in ("latency", "throughput", "stream64")}

result = {"sizes": [], "syscalls": {}}
for s in sizes.split(","):
    b = nbytes(s)
    row = {"size": s, "bytes": b, "ratios": {}}
    for name in rows:
        lat, lat_spread = median_run(data[name]["latency"].get(b, []), "p50_us")
        tp, tp_spread = median_run(data[name]["throughput"].get(b, []), "gbit_per_sec")
        row[name] = {"latency": lat, "p50_spread_us": lat_spread,
                     "throughput": tp, "gbit_spread": tp_spread}
    for name in ("memif", "tap"):
        p, d = row["posix"], row[name]
        if p["latency"] and d["latency"]:
            row["ratios"][f"rtt_p50_{name}_over_posix"] = d["latency"]["p50_us"] / p["latency"]["p50_us"]
        if p["throughput"] and d["throughput"]:
            row["ratios"][f"throughput_{name}_over_posix"] = (
                d["throughput"]["gbit_per_sec"] / p["throughput"]["gbit_per_sec"])
    result["sizes"].append(row)

# 64 B, one connection, window 64: memif beside posix (lossy), messages per second.
stream = {}
for name in ("posix", "memif"):
    med, sp = median_run(data[name]["stream64"].get(64, []), "msgs_per_sec")
    stream[name] = {"median": med, "msgs_spread": sp}
if stream["posix"]["median"] and stream["memif"]["median"]:
    stream["memif_over_posix"] = (stream["memif"]["median"]["msgs_per_sec"]
                                  / stream["posix"]["median"]["msgs_per_sec"])
# The protocol alone (criterion's median time per window of 64 messages), per repetition.
proto = []
for rep in range(1, reps + 1):
    d = load_json(f"{raw}/proto-stream64-{rep}.json")
    if d is not None:
        proto.append(64 / (d["median"]["point_estimate"] * 1e-9))
stream["proto_alone"] = {"median": statistics.median(proto) if proto else None,
                         "spread": [min(proto), max(proto)] if proto else None, "runs": proto}
result["stream64"] = stream
m = stream["memif"]["median"]
p = stream["proto_alone"]["median"]
result["targets"] = {} if not m else {"stream64_memif": {
    "msgs_per_sec": m["msgs_per_sec"], "proto_alone_msgs_per_sec": p,
    "over_proto_alone": p and m["msgs_per_sec"] / p,
    "target": ">= 1.5 M msgs/s and >= 0.5x the protocol alone",
    "met": m["msgs_per_sec"] >= 1.5e6 and bool(p) and m["msgs_per_sec"] >= 0.5 * p}}

for stack in ("posix", "dpdk"):
    for mode, size in (("latency", "64"), ("throughput", "64k")):
        got = strace_window(raw, f"syscalls-{stack}-{mode}-{size}")
        if got:
            result["syscalls"][f"{stack}-{mode}-{size}"] = {"stack": stack, "mode": mode, "size": size, **got}

full = load_json(f"{out}/compare.json") or {}
full["dpdk"] = result
with open(f"{out}/compare.json", "w") as f:
    json.dump(full, f, indent=2)
    f.write("\n")


lines = ["", "## DPDK (msgr --stack dpdk beside msgr --stack posix, same run, interleaved)", ""]
lines.append(f"Round trip p50, µs (median of {reps} runs [min..max]); posix: kernel loopback, two processes; "
             "memif: net_memif, two processes; tap: DPDK client on net_tap against a kernel-TCP server")
lines.append("| size | posix | memif | tap | memif/posix | tap/posix | posix spread | memif spread | tap spread |")
lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for row in result["sizes"]:
    g = lambda n: row[n]["latency"] and row[n]["latency"]["p50_us"]
    lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
        row["size"], fmt(g("posix")), fmt(g("memif")), fmt(g("tap")),
        fmt(row["ratios"].get("rtt_p50_memif_over_posix"), ".2f"),
        fmt(row["ratios"].get("rtt_p50_tap_over_posix"), ".2f"),
        spread(row["posix"]["p50_spread_us"]), spread(row["memif"]["p50_spread_us"]),
        spread(row["tap"]["p50_spread_us"])))
lines.append("")
lines.append(f"Throughput, one connection, window {window}, Gbit/s of payload (median of {reps} runs [min..max])")
lines.append("| size | posix | memif | tap | memif/posix | tap/posix | posix spread | memif spread | tap spread |")
lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for row in result["sizes"]:
    g = lambda n: row[n]["throughput"] and row[n]["throughput"]["gbit_per_sec"]
    lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
        row["size"], fmt(g("posix"), ".2f"), fmt(g("memif"), ".2f"), fmt(g("tap"), ".2f"),
        fmt(row["ratios"].get("throughput_memif_over_posix"), ".2f"),
        fmt(row["ratios"].get("throughput_tap_over_posix"), ".2f"),
        spread(row["posix"]["gbit_spread"], ".2f"), spread(row["memif"]["gbit_spread"], ".2f"),
        spread(row["tap"]["gbit_spread"], ".2f")))
if stream["memif"]["median"]:
    lines.append("")
    lines.append(f"64 B streaming, one connection, window 64, msgs/s (median of {reps} runs [min..max])")
    lines.append("| posix | memif | protocol alone | memif/posix | memif/protocol | posix spread "
                 "| memif spread | protocol spread |")
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    g = lambda n: stream[n]["median"] and stream[n]["median"]["msgs_per_sec"]
    pa = stream["proto_alone"]
    lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
        fmt(g("posix"), ".0f"), fmt(g("memif"), ".0f"), fmt(pa["median"], ".0f"),
        fmt(stream.get("memif_over_posix"), ".2f"),
        fmt(pa["median"] and g("memif") / pa["median"], ".2f"),
        spread(stream["posix"]["msgs_spread"], ".0f"), spread(stream["memif"]["msgs_spread"], ".0f"),
        spread(pa["spread"], ".0f")))
    for k, t in result["targets"].items():
        lines.append(f"target {k}: {t['msgs_per_sec']:.0f} msgs/s, "
                     f"{fmt(t['over_proto_alone'], '.2f')}x the protocol alone "
                     f"(want {t['target']}): " + ("met" if t["met"] else "NOT met"))
if result["syscalls"]:
    lines.append("")
    lines.append("Syscalls per message on the server, steady state (strace -c -f over a window; per message "
                 "the server received)")
    lines.append("| server | traffic | window s | messages | syscalls | per message | most frequent |")
    lines.append("|---|---|---:|---:|---:|---:|---|")
    for tag, r in result["syscalls"].items():
        lines.append("| {} | {} {} | {} | {} | {} | {} | {} |".format(
            "posix (kernel TCP)" if r["stack"] == "posix" else "dpdk (memif)",
            r["mode"], r["size"], r["window_s"], r["server_messages"], r["syscalls"],
            fmt(r["per_message"], ".4f"), ", ".join(f"{n} {c}" for n, c in r["top"]) or "-"))
text = "\n".join(lines)
print(text)
with open(f"{out}/compare.md", "a") as f:
    f.write(text + "\n")
PY
fi

# ---- RDMA rows (--rdma; owner: the RDMA stack) -------------------------------------------------------
if ((RDMA && !REPORT_ONLY)); then
    echo "==> RDMA rows: msgr over soft-RoCE beside perftest, $REPS rounds in one qemu guest" >&2
    # `msgr bench --stack rdma` needs the feature: this rebuilds target/release/msgr with it.
    cargo build --release --features rdma --bin msgr >&2
    MSGR_RDMA_ROUNDS="$REPS" scripts/softroce-vm.sh -- scripts/rdma-checks.sh - \
        target/release/msgr "$OUT/rdma.txt" >&2
    {
        echo
        echo "## RDMA (soft-RoCE in a qemu guest; perftest and msgr in the same run)"
        echo
        echo '```'
        cat "$OUT/rdma.txt"
        echo '```'
    } >>"$OUT/compare.md"
    cat "$OUT/rdma.txt"
fi
