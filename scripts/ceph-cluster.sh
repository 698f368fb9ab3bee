#!/usr/bin/env bash
# Start or stop a small real Ceph cluster (Debian's Ceph 16.2) on 127.0.0.1 for msgr's RADOS tests and
# benchmarks: one monitor ("mon.a") and N OSDs with the memstore object store (no disks), no mgr,
# everything (conf, stores, logs, pid files, admin sockets, keyrings) under one directory DIR.
# Recipe and pitfalls: shared/notes/ceph-osd.md and shared/notes/ceph-mon.md.
#
#   scripts/ceph-cluster.sh start  DIR [--osds N] [--auth none|cephx] [--mon-port P] [--pool NAME]
#                                      [--size S] [--pg-num P] [--debug-ms L]
#   scripts/ceph-cluster.sh stop   DIR
#   scripts/ceph-cluster.sh status DIR
#
# start  bootstraps a fresh cluster in DIR (a previous one there is discarded; refused while it runs):
#        the monitor on v2:127.0.0.1:P (default 3300, msgr2 only), N (default 1) memstore OSDs, and pool
#        NAME (default "test", size S (default min(N,2)), pg_num P (default 8)). OSD failure detection is
#        fast: osd_heartbeat_interval = 1, osd_heartbeat_grace = 3, mon_osd_min_down_reporters = 1.
#        --auth cephx (default none) makes DIR/keyring (mon., client.admin with all caps) and a key per
#        OSD, requires cephx everywhere and allows modes "secure crc" on every connection.
#        Waits until a real `rados put` to the pool succeeds, then writes DIR/env (MON_HOST=, CONF=,
#        KEYRING=, POOL=, PIDS=, ...) and prints it.
# stop   sends SIGTERM to every daemon it started (the pids in DIR/run/*.pid, each checked against
#        /proc/PID/cmdline first), waits for them (SIGKILL after 20 s); exits 0 if nothing ran.
# status prints the env and the daemons running; exits 0 if all run, 3 if none, 4 if some.
set -euo pipefail

readonly MON_ID=a
readonly HOST=127.0.0.1
readonly READY_TIMEOUT_S=60
readonly STOP_TIMEOUT_S=20

die() {
    echo "ceph-cluster.sh: error: $*" >&2
    exit 1
}

usage() {
    sed -n '7,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,3\}//' >&2
    exit 2
}

need_cmd() { # need_cmd COMMAND DEBIAN_PACKAGE
    command -v "$1" >/dev/null 2>&1 ||
        die "'$1' not found: install Debian package $2 (apt-get install --no-install-recommends ceph-osd ceph-mon ceph-common)"
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

port_listening() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v suffix=":$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == suffix { found = 1 }
                           END { exit found ? 0 : 1 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# pid_is_ours PID: the process is a ceph daemon started with DIR's ceph.conf (a zombie's cmdline is
# empty, so an exited daemon does not count).
pid_is_ours() {
    local pid="$1" cmdline
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ "$cmdline" == *ceph-* && "$cmdline" == *" $DIR/ceph.conf"* ]]
}

# Lines "NAME PID" for every daemon of DIR that runs.
running_daemons() {
    local f pid
    for f in "$DIR"/run/*.pid; do
        [[ -f "$f" ]] || continue
        pid=$(tr -dc '0-9' <"$f")
        if pid_is_ours "$pid"; then
            echo "$(basename "$f" .pid) $pid"
        fi
    done
}

log_tail() { # log_tail FILE
    if [[ -s "$1" ]]; then
        echo "--- last lines of $1:" >&2
        tail -n 20 "$1" >&2
    fi
}

ceph_cli() {
    timeout 20 ceph -c "$DIR/ceph.conf" --connect-timeout 10 "$@"
}

write_conf() { # write_conf AUTH MODES MON_PORT SIZE DEBUG_MS
    local auth="$1" modes="$2" mon_port="$3" size="$4" debug_ms="$5" fsid mode
    fsid=$(cat /proc/sys/kernel/random/uuid)
    {
        echo "# Written by scripts/ceph-cluster.sh: one monitor and memstore OSDs on $HOST, auth $auth."
        echo "[global]"
        echo "fsid = $fsid"
        echo "mon_host = [v2:$HOST:$mon_port]"
        echo "mon_initial_members = $MON_ID"
        echo "public_addr = $HOST"
        echo "cluster_addr = $HOST"
        echo "auth_cluster_required = $auth"
        echo "auth_service_required = $auth"
        echo "auth_client_required = $auth"
        echo "ms_bind_msgr2 = true"
        echo "ms_bind_msgr1 = false"
        for mode in ms_mon_client_mode ms_mon_cluster_mode ms_mon_service_mode \
            ms_client_mode ms_cluster_mode ms_service_mode; do
            echo "$mode = $modes"
        done
        # ceph-mon refuses to start (and later shuts down) at avail% <= crit, and avail% is a whole
        # number: a shared disk under 1% free reads 0%. These daemons are throwaway, so never.
        echo "mon_data_avail_warn = -1"
        echo "mon_data_avail_crit = -1"
        echo "osd_pool_default_size = $size"
        echo "osd_pool_default_min_size = 1"
        echo "osd_crush_chooseleaf_type = 0"
        echo "osd_pool_default_pg_autoscale_mode = off"
        echo "mon_allow_pool_size_one = true"
        echo "mon_allow_pool_delete = true"
        echo "mon_warn_on_pool_no_redundancy = false"
        echo "mon_warn_on_insecure_global_id_reclaim_allowed = false"
        echo "mon_osd_allow_primary_temp = true"
        echo "mon_osd_allow_primary_affinity = true"
        echo "# A killed OSD is marked down within seconds."
        echo "osd_heartbeat_interval = 1"
        echo "osd_heartbeat_grace = 3"
        echo "mon_osd_min_down_reporters = 1"
        echo "osd_max_object_name_len = 256"
        echo "osd_max_object_namespace_len = 64"
        [[ -z "$debug_ms" ]] || echo "debug_ms = $debug_ms"
        echo "run_dir = $DIR/run"
        echo "log_file = $DIR/log/\$name.log"
        echo "keyring = $DIR/keyring"
        echo
        echo "[mon]"
        echo "mon_data = $DIR/mon-\$id"
        echo "admin_socket = $DIR/run/\$name.asok"
        echo "pid_file = $DIR/run/\$name.pid"
        echo
        echo "[osd]"
        echo "osd_objectstore = memstore"
        echo "# With fast shutdown memstore drops its data on SIGTERM."
        echo "osd_fast_shutdown = false"
        echo "osd_data = $DIR/osd/\$cluster-\$id"
        echo "memstore_device_bytes = 4294967296"
        echo "keyring = $DIR/osd/\$cluster-\$id.keyring"
        echo "admin_socket = $DIR/run/\$name.asok"
        echo "pid_file = $DIR/run/\$name.pid"
    } >"$DIR/ceph.conf"
    echo "$fsid"
}

# wait_pid_file NAME: the daemon's pid once its pid file names a live process of ours.
wait_pid_file() {
    local name="$1" deadline=$((SECONDS + 20)) pid
    while ((SECONDS < deadline)); do
        if [[ -f "$DIR/run/$name.pid" ]]; then
            pid=$(tr -dc '0-9' <"$DIR/run/$name.pid")
            if pid_is_ours "$pid"; then
                echo "$pid"
                return 0
            fi
        fi
        sleep 0.1
    done
    log_tail "$DIR/log/$name.log"
    die "$name did not start (no live pid in $DIR/run/$name.pid after 20 s)"
}

cmd_start() {
    local osds=1 auth=none mon_port=3300 pool=test size="" pg_num=8 debug_ms=""
    while (($#)); do
        case "$1" in
        --osds) osds="${2:-}"; shift 2 || usage ;;
        --auth) auth="${2:-}"; shift 2 || usage ;;
        --mon-port) mon_port="${2:-}"; shift 2 || usage ;;
        --pool) pool="${2:-}"; shift 2 || usage ;;
        --size) size="${2:-}"; shift 2 || usage ;;
        --pg-num) pg_num="${2:-}"; shift 2 || usage ;;
        --debug-ms) debug_ms="${2:-}"; shift 2 || usage ;;
        *) die "unknown option '$1'" ;;
        esac
    done
    is_uint "$osds" && ((osds >= 1 && osds <= 16)) || die "--osds: '$osds' is not a number from 1 to 16"
    [[ "$auth" == none || "$auth" == cephx ]] || die "--auth: '$auth' is not none or cephx"
    is_uint "$mon_port" && ((mon_port >= 1 && mon_port <= 65535)) || die "--mon-port: '$mon_port' is not a port"
    [[ "$pool" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--pool: '$pool' is not a simple pool name"
    [[ -n "$size" ]] || size=$((osds < 2 ? osds : 2))
    is_uint "$size" && ((size >= 1 && size <= osds)) || die "--size: '$size' is not from 1 to --osds ($osds)"
    is_uint "$pg_num" && ((pg_num >= 1 && pg_num <= 1024)) || die "--pg-num: '$pg_num' is not from 1 to 1024"
    [[ -z "$debug_ms" || "$debug_ms" =~ ^[0-9]+(/[0-9]+)?$ ]] || die "--debug-ms: '$debug_ms' is not a level"

    need_cmd ceph-mon ceph-mon
    need_cmd ceph-osd ceph-osd
    need_cmd monmaptool ceph-base
    need_cmd ceph ceph-common
    need_cmd rados ceph-common
    [[ "$auth" == none ]] || need_cmd ceph-authtool ceph-common

    local running
    running=$(running_daemons)
    [[ -z "$running" ]] || die "a cluster in $DIR is running ($(echo "$running" | tr '\n' ' ')); stop it first"
    port_listening "$mon_port" && die "port $mon_port is busy; choose another --mon-port"

    rm -rf "${DIR:?}/mon-$MON_ID" "$DIR/osd" "$DIR/run" "$DIR/monmap" "$DIR/env" "$DIR/keyring"
    mkdir -p "$DIR/run" "$DIR/log" "$DIR/osd"
    rm -f "$DIR"/log/*.log
    local modes=crc
    : >"$DIR/keyring"
    if [[ "$auth" == cephx ]]; then
        modes="secure crc"
        {
            ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' &&
                ceph-authtool "$DIR/keyring" --gen-key -n client.admin --cap mon 'allow *' \
                    --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
        } >"$DIR/log/authtool.log" 2>&1 || { cat "$DIR/log/authtool.log" >&2; die "ceph-authtool failed"; }
    fi
    local fsid
    fsid=$(write_conf "$auth" "$modes" "$mon_port" "$size" "$debug_ms")

    monmaptool --create --clobber --fsid "$fsid" --addv "$MON_ID" "[v2:$HOST:$mon_port]" \
        --set-min-mon-release 16 "$DIR/monmap" >"$DIR/log/monmaptool.log" 2>&1 ||
        { cat "$DIR/log/monmaptool.log" >&2; die "monmaptool failed"; }
    ceph-mon --mkfs -i "$MON_ID" --monmap "$DIR/monmap" -c "$DIR/ceph.conf" --keyring "$DIR/keyring" \
        >"$DIR/log/mkfs-mon.log" 2>&1 || { cat "$DIR/log/mkfs-mon.log" >&2; die "ceph-mon --mkfs failed"; }
    ceph-mon -i "$MON_ID" -c "$DIR/ceph.conf" >"$DIR/log/start-mon.log" 2>&1 ||
        { cat "$DIR/log/start-mon.log" >&2; df -h "$DIR" >&2; die "ceph-mon failed to start"; }
    wait_pid_file "mon.$MON_ID" >/dev/null
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until ceph_cli mon stat >"$DIR/log/ready-mon.log" 2>&1; do
        ((SECONDS < deadline)) || { log_tail "$DIR/log/mon.$MON_ID.log"; die "monitor not ready after ${READY_TIMEOUT_S}s"; }
        sleep 0.2
    done

    local id uuid
    for ((id = 0; id < osds; id++)); do
        uuid=$(cat /proc/sys/kernel/random/uuid)
        mkdir -p "$DIR/osd/ceph-$id"
        if [[ "$auth" == cephx ]]; then
            ceph-authtool --create-keyring "$DIR/osd/ceph-$id.keyring" --gen-key -n "osd.$id" \
                >>"$DIR/log/authtool.log" 2>&1 || die "ceph-authtool for osd.$id failed"
            ceph_cli auth add "osd.$id" osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' \
                -i "$DIR/osd/ceph-$id.keyring" >>"$DIR/log/osd-new.log" 2>&1 ||
                { cat "$DIR/log/osd-new.log" >&2; die "ceph auth add osd.$id failed"; }
        fi
        local got
        got=$(ceph_cli osd new "$uuid" "$id" 2>>"$DIR/log/osd-new.log") ||
            { cat "$DIR/log/osd-new.log" >&2; die "ceph osd new for osd.$id failed"; }
        [[ "$got" == "$id" ]] || die "ceph osd new gave id '$got', expected $id"
        ceph-osd -i "$id" -c "$DIR/ceph.conf" --mkfs --osd-uuid "$uuid" >"$DIR/log/mkfs-osd.$id.log" 2>&1 ||
            { cat "$DIR/log/mkfs-osd.$id.log" >&2; die "ceph-osd --mkfs for osd.$id failed"; }
        ceph-osd -i "$id" -c "$DIR/ceph.conf" >"$DIR/log/start-osd.$id.log" 2>&1 ||
            { cat "$DIR/log/start-osd.$id.log" >&2; df -h "$DIR" >&2; die "ceph-osd $id failed to start"; }
    done
    for ((id = 0; id < osds; id++)); do
        wait_pid_file "osd.$id" >/dev/null
    done

    ceph_cli osd pool create "$pool" "$pg_num" "$pg_num" replicated >"$DIR/log/pool.log" 2>&1 ||
        { cat "$DIR/log/pool.log" >&2; die "ceph osd pool create $pool failed"; }
    ceph_cli osd pool set "$pool" size "$size" --yes-i-really-mean-it >>"$DIR/log/pool.log" 2>&1 ||
        { cat "$DIR/log/pool.log" >&2; die "ceph osd pool set $pool size $size failed"; }

    # Ready: every OSD up and a real client's write lands.
    echo "ready" >"$DIR/run/probe.obj"
    until [[ "$(ceph_cli osd stat -f json 2>/dev/null | sed -n 's/.*"num_up_osds":\([0-9]*\).*/\1/p')" == "$osds" ]] &&
        timeout 10 rados -c "$DIR/ceph.conf" -p "$pool" put ceph-cluster-probe "$DIR/run/probe.obj" \
            >"$DIR/log/ready.log" 2>&1; do
        if ((SECONDS >= deadline + 60)); then
            cat "$DIR/log/ready.log" >&2
            for ((id = 0; id < osds; id++)); do log_tail "$DIR/log/osd.$id.log"; done
            die "cluster not ready (all $osds OSDs up and a rados put to $pool) in time"
        fi
        sleep 0.3
    done
    timeout 10 rados -c "$DIR/ceph.conf" -p "$pool" rm ceph-cluster-probe >>"$DIR/log/ready.log" 2>&1 || true

    local pids=""
    local name pid
    while read -r name pid; do pids+="$name=$pid "; done < <(running_daemons)
    {
        echo "FSID=$fsid"
        echo "MON_HOST=v2:$HOST:$mon_port"
        echo "CONF=$DIR/ceph.conf"
        echo "KEYRING=$DIR/keyring"
        echo "AUTH=$auth"
        echo "POOL=$pool"
        echo "OSDS=$osds"
        echo "PIDS=${pids% }"
    } >"$DIR/env.tmp"
    mv "$DIR/env.tmp" "$DIR/env"
    echo "cluster running: mon.$MON_ID and $osds OSD(s), pool $pool (size $size, pg_num $pg_num)"
    cat "$DIR/env"
}

cmd_stop() {
    (($# == 0)) || die "stop takes no options"
    local -a names=() pids=()
    local name pid
    while read -r name pid; do
        names+=("$name")
        pids+=("$pid")
    done < <(running_daemons)
    if ((${#pids[@]} == 0)); then
        echo "cluster in $DIR: not running"
        return 0
    fi
    # OSDs first, so they do not spin looking for the monitor.
    local i
    for i in "${!pids[@]}"; do [[ "${names[$i]}" == mon.* ]] || kill -TERM "${pids[$i]}" 2>/dev/null || true; done
    for i in "${!pids[@]}"; do [[ "${names[$i]}" != mon.* ]] || kill -TERM "${pids[$i]}" 2>/dev/null || true; done
    local deadline=$((SECONDS + STOP_TIMEOUT_S)) alive
    while :; do
        alive=()
        for i in "${!pids[@]}"; do pid_is_ours "${pids[$i]}" && alive+=("${pids[$i]}"); done
        ((${#alive[@]})) || break
        if ((SECONDS >= deadline)); then
            echo "ceph-cluster.sh: ${alive[*]} still running ${STOP_TIMEOUT_S}s after SIGTERM; sending SIGKILL" >&2
            kill -KILL "${alive[@]}" 2>/dev/null || true
            deadline=$((SECONDS + 5))
            while :; do
                local left=0
                for pid in "${alive[@]}"; do pid_is_ours "$pid" && left=1; done
                ((left)) || break
                ((SECONDS < deadline)) || die "pids ${alive[*]} still running after SIGKILL"
                sleep 0.1
            done
            break
        fi
        sleep 0.1
    done
    echo "cluster in $DIR: stopped (${names[*]})"
}

cmd_status() {
    (($# == 0)) || die "status takes no options"
    local running expected=0
    running=$(running_daemons)
    [[ ! -f "$DIR/env" ]] || cat "$DIR/env"
    if [[ -z "$running" ]]; then
        echo "cluster in $DIR: not running"
        exit 3
    fi
    echo "$running"
    if [[ -f "$DIR/env" ]]; then
        expected=$(($(sed -n 's/^OSDS=//p' "$DIR/env") + 1))
    fi
    (($(echo "$running" | wc -l) >= expected)) || exit 4
}

(($# >= 2)) || usage
action="$1"
case "$action" in start | stop | status) ;; *) usage ;; esac
[[ -n "$2" && "$2" != -* ]] || usage
if [[ "$action" == start ]]; then
    mkdir -p "$2" || die "cannot create directory $2"
elif [[ ! -d "$2" ]]; then
    echo "cluster in $2: not running (no such directory)"
    [[ "$action" == stop ]] && exit 0
    exit 3
fi
DIR=$(cd "$2" && pwd -P)
case "$DIR" in
*[[:space:]]*) die "DIR must not contain whitespace: '$DIR'" ;;
esac
shift 2
case "$action" in
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
status) cmd_status "$@" ;;
esac
