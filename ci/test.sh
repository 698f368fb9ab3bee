#!/usr/bin/env bash
# msgr's test command: the README's `bash ci/test.sh`, and what CI runs (through .ci/run) as root with
# CI=true on a clean machine that has only rustup's toolchain, gcc and python3. Everything else it needs
# it installs itself (Debian packages with apt-get, rustup components), then runs, in order:
#   cargo fmt --check, cargo clippy -D warnings, cargo build --all-targets, cargo test.
# Any failure stops the run with a non-zero exit. Budget: well under 40 minutes on 2 cores.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages the tests need:
#   ceph-mon, ceph-common — a real Ceph 16.2 monitor and the `ceph` CLI for the interop tests
#                           (scripts/ceph-mon.sh starts and stops monitors on loopback).
#   ceph-osd              — memstore OSDs for the RADOS client tests (scripts/ceph-cluster.sh).
#   fio                   — its rados engine is librados's side in scripts/compare-rados.sh.
#   sockperf, iperf3      — the tools scripts/compare.sh runs beside `msgr bench` (the comparison itself
#                           is not run here: it measures, it does not gate).
APT_PACKAGES=(ceph-mon ceph-common ceph-osd fio sockperf iperf3)
#   ceph-base             — crushtool and osdmaptool, the oracles of tests/crush_oracle.rs (CRUSH and
#                           OSDMap placement); the test fails without them.
APT_PACKAGES+=(ceph-base)

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
if [[ "${CI:-}" == "true" ]]; then
    # A clean build gains nothing from incremental artifacts.
    export CARGO_INCREMENTAL=0
    # Tests that need a real Ceph daemon must fail, not skip, when it cannot be started.
    export MSGR_REQUIRE_CEPH=1
fi

RUN_START=$(date +%s)
SECTION_NAME=""
SECTION_START=0
TIMINGS=()
TEST_SUMMARY=""

section() {
    SECTION_NAME="$1"
    SECTION_START=$(date +%s)
    printf '\n==> %s\n' "$SECTION_NAME"
}

section_done() {
    local took=$(($(date +%s) - SECTION_START))
    TIMINGS+=("$(printf '%5ds  %s' "$took" "$SECTION_NAME")")
    printf '<== %s: ok (%ds)\n' "$SECTION_NAME" "$took"
}

on_exit() {
    local rc=$?
    if ((rc != 0)); then
        printf '\n!!! FAILED in "%s" (exit %d) after %ds\n' "$SECTION_NAME" "$rc" $(($(date +%s) - RUN_START)) >&2
    fi
}
trap on_exit EXIT

apt_missing() {
    local pkg
    for pkg in "$@"; do
        if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]]; then
            echo "$pkg"
        fi
    done
}

# Install whichever of the given Debian packages are missing (one `apt-get update` first); needs root.
apt_install_missing() {
    local missing
    missing=$(apt_missing "$@")
    if [[ -z "$missing" ]]; then
        echo "all installed; skipping apt-get"
        return
    fi
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    echo "missing:" $missing
    if ((EUID != 0)); then
        echo "error: installing Debian packages needs root (run as root, or install: $missing)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -q
    # shellcheck disable=SC2086
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $missing
}

install_apt_packages() {
    section "apt packages: ${APT_PACKAGES[*]}"
    apt_install_missing "${APT_PACKAGES[@]}"
    section_done
}

ensure_rust_components() {
    section "rust toolchain: rustfmt, clippy"
    if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
        echo "present"
    else
        rustup component add rustfmt clippy
    fi
    rustc --version
    cargo --version
    cargo fmt --version
    cargo clippy --version
    section_done
}

run_fmt() {
    section "cargo fmt --all -- --check; bash -n on shell scripts"
    cargo fmt --all -- --check
    local script
    for script in ci/*.sh scripts/*.sh .ci/run; do
        if [[ -e "$script" ]]; then bash -n "$script"; fi
    done
    section_done
}

run_clippy() {
    section "cargo clippy --all-targets -- -D warnings"
    cargo clippy --all-targets -- -D warnings
    section_done
}

run_doc() {
    section "cargo doc (warnings are errors)"
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
    section_done
}

run_build() {
    section "cargo build --all-targets"
    cargo build --all-targets
    section_done

    # The library alone (`default-features = false`): it builds, none of the CLI's crates is in its
    # graph, and its doc tests pass.
    section "library alone: cargo build --no-default-features --lib; cargo tree; cargo test --no-default-features --doc"
    cargo build --no-default-features --lib
    local cli_crates
    cli_crates=$(cargo tree --no-default-features -e normal --prefix none --format '{p}' |
        awk '{print $1}' | grep -E '^(clap|plotters|indicatif|tracing-subscriber|hdrhistogram)$' | sort -u || true)
    if [ -n "$cli_crates" ]; then
        echo "the library without default features depends on CLI crates: $cli_crates" >&2
        exit 1
    fi
    cargo test --no-default-features --doc
    section_done
}

run_tests() {
    section "cargo test --no-fail-fast"
    local log
    log=$(mktemp)
    # pipefail makes a failing `cargo test` fail this pipeline despite tee.
    cargo test --no-fail-fast 2>&1 | tee "$log"
    # One line for all test binaries (lib, integration tests, doctests), repeated as the script's last line.
    TEST_SUMMARY=$(awk '/^test result:/ {
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/) p += $(i-1)
                if ($(i) ~ /^failed;?$/) f += $(i-1)
                if ($(i) ~ /^ignored;?$/) s += $(i-1)
            }
         }
         END { printf "tests: %d passed, %d failed, %d skipped", p, f, s }' "$log")
    rm -f "$log"
    printf '\n%s\n' "$TEST_SUMMARY"
    section_done
}

# ---- interceptor phase (feature `interceptor`: the test-only protocol interceptor) --------------------
# Ceph's test_msgr.cc race cases (tests/ceph_msgr_suite_races.rs) drive the protocol step by step through
# the interceptor, which normal builds leave out. Clippy with the feature, then those tests; their counts
# join the summary line (a test behind a feature CI never enables would be silently skipped).
run_interceptor_phase() {
    section "interceptor feature: cargo clippy --all-targets --features interceptor -- -D warnings"
    cargo clippy --all-targets --features interceptor -- -D warnings
    section_done

    section "interceptor feature: cargo test --features interceptor --test ceph_msgr_suite_races"
    local log counts p f s ip if_ is
    log=$(mktemp)
    cargo test --features interceptor --test ceph_msgr_suite_races 2>&1 | tee "$log"
    counts=$(awk '/^test result:/ {
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/) p += $(i-1)
                if ($(i) ~ /^failed;?$/) f += $(i-1)
                if ($(i) ~ /^ignored;?$/) s += $(i-1)
            }
         }
         END { printf "%d %d %d", p, f, s }' "$log")
    rm -f "$log"
    read -r ip if_ is <<<"$counts"
    if ((ip == 0)); then
        echo "interceptor: no race test ran" >&2
        exit 1
    fi
    read -r p f s < <(sed -E 's/[^0-9]+/ /g' <<<"$TEST_SUMMARY")
    TEST_SUMMARY="tests: $((p + ip)) passed, $((f + if_)) failed, $((s + is)) skipped"
    section_done
}

# --- Hooks for the kernel-bypass phases -------------------------------------------------------------
# Each phase installs its own Debian packages and runs clippy and its tests with its feature.
# dpdk: installs Debian's DPDK 22.11 (dpdk, dpdk-dev, libdpdk-dev), pkg-config and libclang-dev (bindgen in
# build.rs), ethtool and iproute2 (the kernel-TCP test builds a veth pair in a network namespace), then runs
# clippy with the feature and the DPDK tests: tests/dpdk_memif.rs (two processes over net_memif),
# tests/dpdk_memif_stress.rs (Ceph's SyntheticInjectTest over memif: 32+ lossless sessions and a
# lossless_peer link, random send / mark_down, injected socket failures, ~10 s), tests/dpdk_kernel_tcp.rs
# (net_af_packet and net_tap against Linux TCP), tests/dpdk_syn_flood.rs (spoofed SYNs from a raw packet
# socket in a namespace; a real client is still served, ~3 s) and tests/bench_dpdk.rs (`msgr bench --stack dpdk` over
# memif and tap through the binary). All run with --no-huge --no-pci and never
# skip: a machine that cannot run them fails here. Needs root (apt, network namespaces, tap interfaces).
DPDK_APT_PACKAGES=(dpdk dpdk-dev libdpdk-dev pkg-config libclang-dev ethtool iproute2)

# Both kernel-bypass features together (their packages are installed by the phases above).
run_all_features_clippy() {
    section "cargo clippy --all-targets --all-features -- -D warnings"
    cargo clippy --all-targets --all-features -- -D warnings
    section_done
}

run_dpdk_phase() {
    section "dpdk feature: apt ${DPDK_APT_PACKAGES[*]}"
    apt_install_missing "${DPDK_APT_PACKAGES[@]}"
    section_done

    section "dpdk feature: cargo clippy --all-targets --features dpdk -- -D warnings"
    cargo clippy --all-targets --features dpdk -- -D warnings
    section_done

    section "dpdk feature: unit tests and DPDK integration tests"
    local log
    log=$(mktemp)
    cargo test --features dpdk --lib stack::dpdk 2>&1 | tee "$log"
    cargo test --features dpdk --test dpdk_memif --test dpdk_memif_stress --test dpdk_kernel_tcp --test dpdk_syn_flood --test bench_dpdk 2>&1 |
        tee -a "$log"
    local dpdk_summary
    dpdk_summary=$(awk '/^test result:/ {
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/) p += $(i-1)
                if ($(i) ~ /^failed;?$/) f += $(i-1)
            }
         }
         END { printf "%d %d", p, f }' "$log")
    rm -f "$log"
    # Fold the DPDK tests into the run's summary line.
    TEST_SUMMARY=$(echo "$TEST_SUMMARY" | awk -v add="$dpdk_summary" '{
            split(add, a, " ")
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed,?$/) $(i-1) += a[1]
                if ($(i) ~ /^failed,?$/) $(i-1) += a[2]
            }
            print
         }')
    section_done
}

# ---- rdma phase (feature `rdma`; owner: the RDMA stack) ---------------------------------------------
# Host side: Debian packages (verbs headers and libraries for bindgen/cc, perftest, qemu for the guest)
# and virtme-ng from PyPI; clippy and the unit tests with --features rdma; release builds of the
# soft-RoCE test binary and of msgr (whose `bench --stack rdma` is the RDMA bench). Then ONE throw-away qemu guest (scripts/softroce-vm.sh,
# Debian's kernel with rdma_rxe, fetched once and cached) runs scripts/rdma-checks.sh: the tests and the
# perftest comparison. Its time is printed; its test counts join the summary line.
# ceph-mon / ceph-common: Ceph 16's RDMA stack for tests/rdma_ceph_interop.rs (also in APT_PACKAGES).
RDMA_APT_PACKAGES=(qemu-system-x86 rdma-core ibverbs-utils ibverbs-providers rdmacm-utils perftest
    libibverbs-dev librdmacm-dev busybox-static kmod iproute2 libclang-dev pkg-config file xz-utils
    ceph-mon ceph-common)
RDMA_VNG_VERSION=1.42
RDMA_GUEST_TIMEOUT=${MSGR_RDMA_GUEST_TIMEOUT:-1500}

rdma_install_host() {
    section "rdma: host packages (apt: ${RDMA_APT_PACKAGES[*]}; pip: virtme-ng==$RDMA_VNG_VERSION)"
    apt_install_missing "${RDMA_APT_PACKAGES[@]}"
    if [[ "$(vng --version 2>/dev/null || true)" != *"$RDMA_VNG_VERSION"* ]]; then
        local pip_cmd=(python3 -m pip)
        if command -v pip >/dev/null 2>&1; then pip_cmd=(pip); fi
        "${pip_cmd[@]}" install -q "virtme-ng==$RDMA_VNG_VERSION" ||
            "${pip_cmd[@]}" install -q --break-system-packages "virtme-ng==$RDMA_VNG_VERSION"
        # pyenv installs need their shims refreshed before `vng` is on PATH.
        if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
        hash -r
    fi
    vng --version
    section_done
}

# The path of a cargo-built executable named $1 from `--message-format=json` output on stdin.
rdma_executable() {
    python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
        print(m["executable"])
' "$1" | tail -1
}

# Add the `test result:` counts of a cargo test log to the summary line run_tests printed.
rdma_add_to_summary() {
    local counts p f s rp rf rs
    counts=$(awk '/^test result:/ {
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/) p += $(i-1)
                if ($(i) ~ /^failed;?$/) f += $(i-1)
                if ($(i) ~ /^ignored;?$/) s += $(i-1)
            }
         }
         END { printf "%d %d %d", p, f, s }' "$1")
    read -r rp rf rs <<<"$counts"
    if [[ -n "$TEST_SUMMARY" ]]; then
        read -r p f s < <(sed -E 's/[^0-9]+/ /g' <<<"$TEST_SUMMARY")
    else
        p=0 f=0 s=0
    fi
    TEST_SUMMARY="tests: $((p + rp)) passed, $((f + rf)) failed, $((s + rs)) skipped"
}

run_rdma_phase() {
    rdma_install_host

    section "rdma: cargo clippy --all-targets --features rdma -- -D warnings; cargo doc --features rdma"
    cargo clippy --all-targets --features rdma -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet --features rdma
    section_done

    section "rdma: host unit tests (cargo test --features rdma --lib stack::rdma; --bin msgr stacks::; --test cli bench_stack_rdma)"
    local unit_log
    unit_log=$(mktemp)
    cargo test --features rdma --lib -- stack::rdma 2>&1 | tee "$unit_log"
    cargo test --features rdma --bin msgr -- stacks:: 2>&1 | tee -a "$unit_log"
    cargo test --features rdma --test cli bench_stack_rdma 2>&1 | tee -a "$unit_log"
    rdma_add_to_summary "$unit_log"
    rm -f "$unit_log"
    section_done

    section "rdma: release build of tests/rdma_softroce.rs, tests/rdma_ceph_interop.rs and msgr (--features rdma)"
    local json test_bin ceph_test_bin cli_bin
    json=$(mktemp)
    cargo build --release --features rdma --test rdma_softroce --test rdma_ceph_interop --bin msgr \
        --message-format=json >"$json"
    test_bin=$(rdma_executable rdma_softroce <"$json")
    ceph_test_bin=$(rdma_executable rdma_ceph_interop <"$json")
    cli_bin=$(rdma_executable msgr <"$json")
    rm -f "$json"
    [[ -x "$test_bin" && -x "$ceph_test_bin" && -x "$cli_bin" ]] ||
        { echo "rdma: built binaries not found" >&2; exit 1; }
    echo "test binary: $test_bin"
    echo "ceph interop test binary: $ceph_test_bin"
    echo "msgr binary: $cli_bin"
    section_done

    section "rdma: soft-RoCE guest (tests + perftest comparison, one boot)"
    local log report guest_start guest_rc
    log=$(mktemp)
    report="target/rdma-compare.txt"
    guest_start=$(date +%s)
    set +e
    scripts/softroce-vm.sh --timeout "$RDMA_GUEST_TIMEOUT" -- \
        scripts/rdma-checks.sh "$test_bin" "$cli_bin" "$report" "$ceph_test_bin" 2>&1 | tee "$log"
    guest_rc=${PIPESTATUS[0]}
    set -e
    echo "rdma: guest step took $(($(date +%s) - guest_start)) s (exit $guest_rc)"
    rdma_add_to_summary "$log"
    rm -f "$log"
    if ((guest_rc != 0)); then
        echo "rdma: soft-RoCE checks failed (exit $guest_rc)" >&2
        exit 1
    fi
    section_done
}
# ---- end of rdma phase ------------------------------------------------------------------------------

install_apt_packages
ensure_rust_components
run_fmt
run_clippy
run_build
run_doc
run_tests
run_interceptor_phase
run_dpdk_phase
run_rdma_phase
run_all_features_clippy

SECTION_NAME="summary"
printf '\n==> timings\n'
printf '%s\n' "${TIMINGS[@]}"
printf '%5ds  total\n' $(($(date +%s) - RUN_START))
echo "ci/test.sh: all green"
echo "$TEST_SUMMARY"
