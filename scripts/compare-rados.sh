#!/usr/bin/env bash
# scripts/compare-rados.sh — msgr's RADOS client against Ceph's own (librados over AsyncMessenger) on the
# SAME cluster in ONE run: `msgr bench --mode rados`, `rados bench` and fio's rados engine (Debian's fio
# links librados; it gives percentiles), --reps repetitions (>= 5) interleaved tool by tool, medians.
#
# Workloads (as issue 16 names them): 4 KiB writes of new objects (write_full) and reads of them at
# queue depth 1, and 4 MiB writes at depth 4. Targets: 4 KiB write and read at depth 1, p50 latency
# <= 0.9x fio/librados's and average <= 0.9x rados bench's; 4 MiB writes at depth 4 >= 0.95x rados
# bench's MB/s. Short runs (--secs each); every object is removed after each run, so memstore never
# fills up.
#
# Usage: scripts/compare-rados.sh [--reps 5] [--secs 3] [--osds 3] [--size 2] [--out DIR] [--msgr PATH]
#        scripts/compare-rados.sh --cluster DIR ...   (use a running scripts/ceph-cluster.sh cluster)
# Without --cluster it starts a fresh cluster (scripts/ceph-cluster.sh, auth none, --osds OSDs, pool
# "test" of --size replicas) in OUT/cluster for every repetition (the three tools share it) and stops it
# by pid, also on failure: a memstore cluster reused for a few repetitions was seen to run slower and
# then to report an OSD full (removed objects notwithstanding), after which every client waits. With
# --cluster, the run stops when the pool is full.
# Writes OUT/raw/* (every tool's output per run), OUT/compare-rados.json and OUT/compare-rados.md, and
# prints the table. Needs ceph-osd, ceph-mon, ceph-common, fio, python3 and a release build of msgr
# (built here unless --msgr PATH is given).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

REPS=5
SECS=3
OSDS=3
SIZE=2
OUT=""
MSGR=""
CLUSTER=""
while (($#)); do
    case "$1" in
    --reps) REPS="${2:-}"; shift 2 ;;
    --secs) SECS="${2:-}"; shift 2 ;;
    --osds) OSDS="${2:-}"; shift 2 ;;
    --size) SIZE="${2:-}"; shift 2 ;;
    --out) OUT="${2:-}"; shift 2 ;;
    --msgr) MSGR="${2:-}"; shift 2 ;;
    --cluster) CLUSTER="${2:-}"; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare-rados.sh: unknown option '$1'" >&2; exit 2 ;;
    esac
done
[[ "$REPS" =~ ^[0-9]+$ ]] && ((REPS >= 5)) || { echo "compare-rados.sh: --reps must be >= 5" >&2; exit 2; }
[[ "$SECS" =~ ^[0-9]+$ ]] && ((SECS >= 1)) || { echo "compare-rados.sh: --secs must be >= 1" >&2; exit 2; }
for cmd in rados fio python3; do
    command -v "$cmd" >/dev/null || { echo "compare-rados.sh: '$cmd' not found (apt-get install ceph-common fio python3)" >&2; exit 1; }
done
OUT="${OUT:-$(mktemp -d /tmp/compare-rados.XXXXXX)}"
mkdir -p "$OUT/raw"
OUT=$(cd "$OUT" && pwd -P)

if [[ -z "$MSGR" ]]; then
    cargo build --release --bin msgr >"$OUT/raw/build.log" 2>&1 || { tail -20 "$OUT/raw/build.log" >&2; exit 1; }
    MSGR=target/release/msgr
fi

OWN_CLUSTER=0
cleanup() {
    if ((OWN_CLUSTER)); then
        scripts/ceph-cluster.sh stop "$CLUSTER" >/dev/null || true
    fi
}
trap cleanup EXIT
if [[ -z "$CLUSTER" ]]; then
    CLUSTER="$OUT/cluster"
    OWN_CLUSTER=1
fi

# (Re)start our own cluster, then read its coordinates.
fresh_cluster() { # fresh_cluster REP
    if ((OWN_CLUSTER)); then
        scripts/ceph-cluster.sh stop "$CLUSTER" >/dev/null
        scripts/ceph-cluster.sh start "$CLUSTER" --osds "$OSDS" --size "$SIZE" --mon-port 23390 \
            >"$OUT/raw/cluster-$1.log"
    fi
    # shellcheck disable=SC1091
    source <(grep -E '^(MON_HOST|CONF|POOL|KEYRING|AUTH)=' "$CLUSTER/env")
    KEYARGS=()
    [[ "${AUTH:-none}" == none ]] || KEYARGS=(--keyring "$KEYRING")
    if timeout 20 ceph -c "$CONF" osd pool ls detail 2>/dev/null | grep -q "'$POOL'.*flags [a-z,]*full"; then
        echo "compare-rados.sh: pool $POOL is full; use a fresh cluster (leave out --cluster)" >&2
        exit 1
    fi
}

msgr_run() { # msgr_run REP
    timeout 300 "$MSGR" bench --mode rados --mon-host "$MON_HOST" --pool "$POOL" "${KEYARGS[@]}" \
        --duration "$SECS" --count 1000000 --json "$OUT/raw/msgr-$1.json" >"$OUT/raw/msgr-$1.txt" 2>&1
}

rados_bench_run() { # rados_bench_run REP: 4 KiB write t1 (kept), rand reads t1, cleanup, 4 MiB write t4
    local r="$1" prefix="cmpr$1"
    timeout 120 rados -c "$CONF" -p "$POOL" bench "$SECS" write -b 4096 -t 1 --no-cleanup \
        --run-name "$prefix" >"$OUT/raw/radosbench-write4k-$r.txt" 2>&1
    timeout 120 rados -c "$CONF" -p "$POOL" bench "$SECS" rand -t 1 --run-name "$prefix" \
        >"$OUT/raw/radosbench-read4k-$r.txt" 2>&1
    timeout 120 rados -c "$CONF" -p "$POOL" cleanup --run-name "$prefix" >/dev/null 2>&1
    timeout 120 rados -c "$CONF" -p "$POOL" bench "$SECS" write -b 4194304 -t 4 \
        --run-name "${prefix}big" >"$OUT/raw/radosbench-write4m-$r.txt" 2>&1
}

fio_run() { # fio_run REP: 4 KiB writes then reads at depth 1 on one 64 MiB object set, then removed
    local r="$1"
    for rw in write read; do
        timeout 120 fio --name="cmpr$r" --ioengine=rados --clientname=admin --pool="$POOL" --conf="$CONF" \
            --rw="rand$rw" --bs=4k --size=64m --iodepth=1 --numjobs=1 --time_based --runtime="$SECS" \
            --output-format=json --output="$OUT/raw/fio-$rw-$r.json" >/dev/null 2>&1
    done
    # fio's rados engine names the object after the job's file.
    timeout 60 rados -c "$CONF" -p "$POOL" ls 2>/dev/null | grep "^cmpr$r" |
        while read -r o; do rados -c "$CONF" -p "$POOL" rm "$o"; done
}

for ((rep = 1; rep <= REPS; rep++)); do
    fresh_cluster "$rep"
    # Interleaved, and the order rotates so that no tool always runs first.
    case $((rep % 3)) in
    0) order="msgr rados fio" ;;
    1) order="rados fio msgr" ;;
    2) order="fio msgr rados" ;;
    esac
    for tool in $order; do
        echo "rep $rep/$REPS: $tool" >&2
        case "$tool" in
        msgr) msgr_run "$rep" ;;
        rados) rados_bench_run "$rep" ;;
        fio) fio_run "$rep" ;;
        esac
    done
done

python3 - "$OUT" "$REPS" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'EOF'
import json, re, statistics, sys, platform, os
out, reps, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
raw = os.path.join(out, "raw")

def rb(path):
    t = open(path).read()
    g = lambda k: float(re.search(re.escape(k) + r":\s+([0-9.e+-]+)", t).group(1))
    return {"iops": g("Average IOPS"), "mb_s": g("Bandwidth (MB/sec)") if "Bandwidth" in t else None,
            "avg_ms": g("Average Latency(s)") * 1e3, "max_ms": g("Max latency(s)") * 1e3}

def fio(path):
    j = json.load(open(path))["jobs"][0]
    side = j["write"] if j["write"]["io_bytes"] else j["read"]
    pct = side["clat_ns"]["percentile"]
    return {"iops": side["iops"], "avg_ms": side["clat_ns"]["mean"] / 1e6,
            "p50_ms": pct["50.000000"] / 1e6, "p99_ms": pct["99.000000"] / 1e6}

def msgr(path):
    res = json.load(open(path))["results"]
    pick = lambda ph, size, depth: next(r for r in res if r["phase"] == ph and r["size"] == size and r["depth"] == depth)
    return {"write4k": pick("write", 4096, 1), "read4k": pick("read", 4096, 1), "write4m": pick("write", 4194304, 4)}

runs = []
for r in range(1, reps + 1):
    runs.append({
        "msgr": msgr(f"{raw}/msgr-{r}.json"),
        "rados_bench": {"write4k": rb(f"{raw}/radosbench-write4k-{r}.txt"),
                        "read4k": rb(f"{raw}/radosbench-read4k-{r}.txt"),
                        "write4m": rb(f"{raw}/radosbench-write4m-{r}.txt")},
        "fio": {"write4k": fio(f"{raw}/fio-write-{r}.json"), "read4k": fio(f"{raw}/fio-read-{r}.json")},
    })
med = lambda xs: statistics.median(xs)
M = lambda f: med([f(x) for x in runs])
rows = []
for w in ("write4k", "read4k"):
    ours_p50 = M(lambda x: x["msgr"][w]["p50_ms"]); fio_p50 = M(lambda x: x["fio"][w]["p50_ms"])
    ours_avg = M(lambda x: x["msgr"][w]["lat_avg_ms"]); rb_avg = M(lambda x: x["rados_bench"][w]["avg_ms"])
    rows.append((f"4 KiB {w[:-2]} depth 1: p50 ms (msgr / fio-librados)", ours_p50, fio_p50, ours_p50 / fio_p50, "<= 0.9"))
    rows.append((f"4 KiB {w[:-2]} depth 1: avg ms (msgr / rados bench)", ours_avg, rb_avg, ours_avg / rb_avg, "<= 0.9"))
ours_mb = M(lambda x: x["msgr"]["write4m"]["mb_per_s"]); rb_mb = M(lambda x: x["rados_bench"]["write4m"]["mb_s"])
rows.append(("4 MiB write depth 4: MB/s (msgr / rados bench)", ours_mb, rb_mb, ours_mb / rb_mb, ">= 0.95"))
md = [f"# msgr RADOS client vs librados (commit {commit}, {platform.node()}, {os.cpu_count()} CPUs, "
      f"{reps} interleaved reps, medians)", "", "| measure | msgr | librados | ratio | target |", "|---|---|---|---|---|"]
for name, a, b, ratio, target in rows:
    md.append(f"| {name} | {a:.3f} | {b:.3f} | {ratio:.2f} | {target} |")
text = "\n".join(md) + "\n"
open(os.path.join(out, "compare-rados.md"), "w").write(text)
json.dump({"commit": commit, "host": platform.node(), "reps": reps, "runs": runs,
           "medians": [{"measure": n, "msgr": a, "librados": b, "ratio": r, "target": t} for n, a, b, r, t in rows]},
          open(os.path.join(out, "compare-rados.json"), "w"), indent=2)
print(text)
EOF
echo "compare-rados.sh: results in $OUT" >&2
