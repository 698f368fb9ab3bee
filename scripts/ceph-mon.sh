#!/usr/bin/env bash
# Start, stop or query one real Ceph monitor ("mon.a", Debian's Ceph 16.2) on 127.0.0.1 (or --host), for msgr's
# interop tests: msgr2 + msgr1, crc mode, auth none (or cephx with secure + crc modes), everything (conf, store, logs, pid, admin socket)
# under one directory DIR. Recipe and measurements: shared/notes/ceph-mon.md.
#
#   scripts/ceph-mon.sh start  DIR [--v2-port P] [--v1-port P] [--fsid UUID]
#                                  [--peer-mon NAME=V2PORT]... [--no-initial-members] [--debug-ms N]
#                                  [--auth none|cephx] [--host IPV4] [--rdma DEV:GID_INDEX]
#   scripts/ceph-mon.sh stop   DIR
#   scripts/ceph-mon.sh status DIR
#
# start  bootstraps a fresh monitor store in DIR (the old store, if any, is discarded), starts ceph-mon and
#        waits until it is ready, then writes DIR/env (FSID=, V2_ADDR=, V1_ADDR=, PID=, ...) and prints it.
#        Without peers, ready means `ceph mon stat` answers (a one-monitor quorum, serving clients).
#        --peer-mon NAME=V2PORT (repeatable) adds mon.NAME at [v2:127.0.0.1:V2PORT/0] to the monmap and to
#        mon_host, and implies --no-initial-members (with mon_initial_members, mkfs drops the peers).
#        Such a monitor never reaches quorum alone: it stays in `probing` and dials each peer's v2
#        address about once a second. That is how a test gets a real Ceph daemon to connect to msgr's
#        own server. Ready then means: the process is up and listening on its v2 port.
#        --auth cephx makes DIR/keyring with ceph-authtool (mon. and client.admin, fresh random keys,
#        all caps), requires cephx everywhere and allows modes "secure crc" (secure preferred) for
#        every connection type; DIR/env then also has AUTH=cephx and KEYRING=DIR/keyring.
#        --host IPV4 binds the monitor (and its monmap entries) to that address instead of 127.0.0.1,
#        e.g. the kernel side of a veth pair inside a network namespace (run the script with
#        `ip netns exec NS`; stop and status work from anywhere, they go by pid).
#        --rdma DEV:GID_INDEX runs the monitor (and the readiness check's client) on Ceph's RDMA stack:
#        ms_type = async+rdma on verbs device DEV with that GID index (RoCE v2), msgr2 only (the monmap
#        has no v1 address), small buffer pools (1024 receive buffers, queue 512, 256 send buffers of
#        128 KiB: ~160 MiB pinned), memlock unlimited. Use --host with an address of DEV's netdev.
#        Ready then means: the v2 port listens (Ceph's TCP side channel) and the monitor leads its
#        quorum of one (its log says so).
#        Recipe: shared/notes/ceph-rdma.md.
# stop   sends SIGTERM to the pid recorded for DIR (only after checking /proc/PID/cmdline is that
#        ceph-mon with DIR's ceph.conf), waits for it to exit (SIGKILL after 20 s), exits 0 if it was not
#        running.
# status prints the pid and addresses and exits 0 if running, 3 if not.
set -euo pipefail

readonly MON_ID=a
HOST=127.0.0.1
readonly READY_TIMEOUT_S=30
readonly STOP_TIMEOUT_S=20

die() {
    echo "ceph-mon.sh: error: $*" >&2
    exit 1
}

usage() {
    sed -n '6,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,3\}//' >&2
    exit 2
}

need_cmd() { # need_cmd COMMAND DEBIAN_PACKAGE
    command -v "$1" >/dev/null 2>&1 ||
        die "'$1' not found: install Debian package $2 (apt-get install --no-install-recommends ceph-mon ceph-common)"
}

is_port() { [[ "$1" =~ ^[0-9]+$ ]] && (("$1" >= 1 && "$1" <= 65535)); }

# True if something listens on TCP port $1 (any address, IPv4 or IPv6), from /proc/net/tcp{,6}.
port_listening() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v suffix=":$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == suffix { found = 1 }
                           END { exit found ? 0 : 1 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# The pid of the ceph-mon serving DIR, or nothing. A pid counts only if /proc/PID/cmdline is ceph-mon
# started with DIR's ceph.conf, so a stale pid file never leads to signalling an unrelated process.
running_pid() {
    local pid="" file
    for file in "$DIR/run/ceph-mon.$MON_ID.pid" "$DIR/env"; do
        [[ -f "$file" ]] || continue
        if [[ "$file" == */env ]]; then
            pid=$(sed -n 's/^PID=//p' "$file")
        else
            pid=$(tr -dc '0-9' <"$file")
        fi
        [[ -n "$pid" ]] && pid_is_our_mon "$pid" && {
            echo "$pid"
            return 0
        }
    done
    return 0
}

pid_is_our_mon() {
    local pid="$1" cmdline
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    # A zombie has an empty cmdline, so it does not count as running.
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmdline" == *ceph-mon* && "$cmdline" == *" $DIR/ceph.conf "* ]]
}

log_tail() {
    local log="$DIR/log/ceph-mon.$MON_ID.log"
    if [[ -s "$log" ]]; then
        echo "--- last lines of $log:" >&2
        tail -n 20 "$log" >&2
    fi
}

print_env() {
    cat "$DIR/env"
}

cmd_start() {
    local v2_port=3300 v1_port=6789 fsid="" debug_ms="" initial_members=1 auth=none rdma=
    local -a peers=()
    while (($#)); do
        case "$1" in
        --v2-port) v2_port="${2:-}"; shift 2 || usage ;;
        --v1-port) v1_port="${2:-}"; shift 2 || usage ;;
        --fsid) fsid="${2:-}"; shift 2 || usage ;;
        --peer-mon) peers+=("${2:-}"); shift 2 || usage ;;
        --no-initial-members) initial_members=0; shift ;;
        --debug-ms) debug_ms="${2:-}"; shift 2 || usage ;;
        --auth) auth="${2:-}"; shift 2 || usage ;;
        --host) HOST="${2:-}"; shift 2 || usage ;;
        --rdma) rdma="${2:-}"; shift 2 || usage ;;
        *) die "unknown option '$1'" ;;
        esac
    done
    [[ "$HOST" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || die "--host: '$HOST' is not an IPv4 address"
    is_port "$v2_port" || die "--v2-port: '$v2_port' is not a port number"
    is_port "$v1_port" || die "--v1-port: '$v1_port' is not a port number"
    ((v2_port != v1_port)) || die "--v2-port and --v1-port must differ"
    if [[ -z "$fsid" ]]; then
        fsid=$(cat /proc/sys/kernel/random/uuid)
    fi
    [[ "$fsid" =~ ^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$ ]] || die "--fsid: '$fsid' is not a UUID"
    [[ "$auth" == none || "$auth" == cephx ]] || die "--auth: '$auth' is not none or cephx"
    [[ -z "$debug_ms" || "$debug_ms" =~ ^[0-9]+(/[0-9]+)?$ ]] || die "--debug-ms: '$debug_ms' is not a level"

    [[ -z "$rdma" || "$rdma" =~ ^[A-Za-z0-9_.-]+:[0-9]+$ ]] || die "--rdma: '$rdma' is not DEV:GID_INDEX"
    local mon_addrs="[v2:$HOST:$v2_port,v1:$HOST:$v1_port]"
    # Over RDMA: msgr2 only, as in the measured recipe.
    [[ -z "$rdma" ]] || mon_addrs="[v2:$HOST:$v2_port]"
    local mon_host="$mon_addrs"
    local -a monmap_args=(--addv "$MON_ID" "$mon_addrs")
    local -a peer_env=()
    local peer name port
    for peer in "${peers[@]}"; do
        [[ "$peer" =~ ^([a-z0-9][a-z0-9_-]*)=([0-9]+)$ ]] || die "--peer-mon: '$peer' is not NAME=V2PORT"
        name="${BASH_REMATCH[1]}"
        port="${BASH_REMATCH[2]}"
        is_port "$port" || die "--peer-mon: '$port' is not a port number"
        [[ "$name" != "$MON_ID" ]] || die "--peer-mon: '$MON_ID' is this monitor's own name"
        ((port != v2_port && port != v1_port)) || die "--peer-mon: port $port is this monitor's own"
        # v2 only: msgr speaks msgr2 alone, and mon.a then dials exactly this address.
        mon_host+=",[v2:$HOST:$port]"
        monmap_args+=(--addv "$name" "[v2:$HOST:$port]")
        peer_env+=("PEER_${name//-/_}_V2_ADDR=$HOST:$port")
    done
    ((${#peers[@]} == 0)) || initial_members=0

    need_cmd ceph-mon ceph-mon
    need_cmd monmaptool ceph-base
    need_cmd ceph ceph-common
    [[ "$auth" == none ]] || need_cmd ceph-authtool ceph-common

    local pid
    pid=$(running_pid)
    [[ -z "$pid" ]] || die "a monitor for $DIR is already running (pid $pid); stop it first"
    for port in "$v2_port" "$v1_port"; do
        if port_listening "$port"; then
            die "port $port is busy (something already listens on it); choose other --v2-port/--v1-port"
        fi
    done

    # Fresh store every time: only the paths this script creates are removed.
    rm -rf "${DIR:?}/mon-$MON_ID" "$DIR/monmap" "$DIR/env" "$DIR/run"
    mkdir -p "$DIR/run" "$DIR/log"
    : >"$DIR/keyring"
    local modes=crc
    if [[ "$auth" == cephx ]]; then
        modes="secure crc"
        {
            ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' &&
                ceph-authtool "$DIR/keyring" --gen-key -n client.admin --cap mon 'allow *' \
                    --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
        } >"$DIR/log/authtool.log" 2>&1 || { cat "$DIR/log/authtool.log" >&2; die "ceph-authtool failed"; }
    fi

    {
        echo "# Written by scripts/ceph-mon.sh: one monitor on $HOST, auth $auth, modes: $modes."
        echo "[global]"
        echo "fsid = $fsid"
        echo "mon_host = $mon_host"
        if ((initial_members)); then
            echo "mon_initial_members = $MON_ID"
        fi
        echo "public_addr = $HOST"
        echo "auth_cluster_required = $auth"
        echo "auth_service_required = $auth"
        echo "auth_client_required = $auth"
        echo "ms_bind_msgr2 = true"
        if [[ -n "$rdma" ]]; then
            echo "# Ceph's RDMA messenger stack (async+rdma), pools sized for a small test guest."
            echo "ms_bind_msgr1 = false"
            echo "public_network = ${HOST%.*}.0/24"
            echo "ms_type = async+rdma"
            echo "ms_async_rdma_device_name = ${rdma%%:*}"
            echo "ms_async_rdma_gid_idx = ${rdma##*:}"
            echo "ms_async_rdma_roce_ver = 2"
            echo "ms_async_rdma_receive_buffers = 1024"
            echo "ms_async_rdma_receive_queue_len = 512"
            echo "ms_async_rdma_send_buffers = 256"
            echo "ms_async_rdma_support_srq = true"
        fi
        local mode
        for mode in ms_mon_client_mode ms_mon_cluster_mode ms_mon_service_mode \
            ms_client_mode ms_cluster_mode ms_service_mode; do
            echo "$mode = $modes"
        done
        # ceph-mon refuses to start (and later shuts down) at avail% <= crit, and avail% is a whole
        # number: a shared disk under 1% free reads 0%. These daemons are throwaway, so never.
        echo "mon_data_avail_warn = -1"
        echo "mon_data_avail_crit = -1"
        echo "run_dir = $DIR/run"
        echo "log_file = $DIR/log/\$name.log"
        echo "keyring = $DIR/keyring"
        echo
        echo "[mon]"
        echo "mon_data = $DIR/mon-\$id"
        echo "log_file = $DIR/log/ceph-mon.\$id.log"
        echo "admin_socket = $DIR/run/ceph-mon.\$id.asok"
        echo "pid_file = $DIR/run/ceph-mon.\$id.pid"
    } >"$DIR/ceph.conf"

    monmaptool --create --clobber --fsid "$fsid" "${monmap_args[@]}" --set-min-mon-release 16 \
        "$DIR/monmap" >"$DIR/log/monmaptool.log" 2>&1 ||
        { cat "$DIR/log/monmaptool.log" >&2; die "monmaptool failed"; }
    ceph-mon --mkfs -i "$MON_ID" --monmap "$DIR/monmap" -c "$DIR/ceph.conf" --keyring "$DIR/keyring" >"$DIR/log/mkfs.log" 2>&1 ||
        { cat "$DIR/log/mkfs.log" >&2; log_tail; die "ceph-mon --mkfs failed"; }

    local -a extra=()
    [[ -z "$debug_ms" ]] || extra+=(--debug_ms "$debug_ms")
    # Ceph's RDMA stack registers its whole buffer pool.
    [[ -z "$rdma" ]] || ulimit -l unlimited 2>/dev/null || true
    # ceph-mon daemonizes; the daemon writes its pid to DIR/run/ceph-mon.a.pid.
    ceph-mon -i "$MON_ID" -c "$DIR/ceph.conf" "${extra[@]}" >"$DIR/log/start.log" 2>&1 ||
        { cat "$DIR/log/start.log" >&2; log_tail; df -h "$DIR" >&2; die "ceph-mon failed to start"; }

    local deadline=$((SECONDS + READY_TIMEOUT_S)) ready=0
    pid=""
    while ((SECONDS < deadline)); do
        [[ -n "$pid" ]] || pid=$(running_pid)
        if [[ -n "$pid" ]]; then
            pid_is_our_mon "$pid" || {
                log_tail
                die "ceph-mon (pid $pid) exited during start-up (is port $v2_port or $v1_port busy?)"
            }
            if [[ -n "$rdma" ]]; then
                # Over RDMA a `ceph mon stat` client registers ~160 MiB first (seconds under
                # emulation): ready is the side channel's port listening and the monitor leading.
                if port_listening "$v2_port" &&
                    grep -q "mon\.$MON_ID@0(leader)" "$DIR/log/ceph-mon.$MON_ID.log" 2>/dev/null; then
                    ready=1
                    break
                fi
            elif ((${#peers[@]} == 0)); then
                if timeout 10 ceph -c "$DIR/ceph.conf" --connect-timeout 5 mon stat >"$DIR/log/ready.log" 2>&1; then
                    ready=1
                    break
                fi
            elif port_listening "$v2_port"; then
                ready=1
                break
            fi
        fi
        sleep 0.2
    done
    if ((!ready)); then
        log_tail
        [[ -z "$pid" ]] || kill -TERM "$pid" 2>/dev/null || true
        die "ceph-mon for $DIR not ready after ${READY_TIMEOUT_S}s (pid ${pid:-none}); see $DIR/log/"
    fi

    {
        echo "FSID=$fsid"
        echo "V2_ADDR=$HOST:$v2_port"
        echo "V1_ADDR=$HOST:$v1_port"
        echo "PID=$pid"
        echo "MON_NAME=$MON_ID"
        echo "MON_ADDRS=$mon_addrs"
        echo "CONF=$DIR/ceph.conf"
        echo "LOG=$DIR/log/ceph-mon.$MON_ID.log"
        echo "AUTH=$auth"
        [[ "$auth" == none ]] || echo "KEYRING=$DIR/keyring"
        printf '%s\n' "${peer_env[@]}"
    } | grep -v '^$' >"$DIR/env.tmp"
    mv "$DIR/env.tmp" "$DIR/env"
    if ((${#peers[@]})); then
        echo "mon.$MON_ID running (probing: peers ${peers[*]}; no quorum, serves no clients)"
    else
        echo "mon.$MON_ID running (quorum of one)"
    fi
    print_env
}

cmd_stop() {
    (($# == 0)) || die "stop takes no options"
    local pid
    pid=$(running_pid)
    if [[ -z "$pid" ]]; then
        echo "mon.$MON_ID for $DIR: not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT_S))
    while pid_is_our_mon "$pid"; do
        if ((SECONDS >= deadline)); then
            echo "ceph-mon.sh: pid $pid did not exit within ${STOP_TIMEOUT_S}s of SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            local kill_deadline=$((SECONDS + 5))
            while pid_is_our_mon "$pid"; do
                ((SECONDS < kill_deadline)) || die "pid $pid still running after SIGKILL"
                sleep 0.1
            done
            break
        fi
        sleep 0.1
    done
    echo "mon.$MON_ID for $DIR: stopped (pid $pid)"
}

cmd_status() {
    (($# == 0)) || die "status takes no options"
    local pid
    pid=$(running_pid)
    if [[ -z "$pid" ]]; then
        echo "mon.$MON_ID for $DIR: not running"
        exit 3
    fi
    echo "mon.$MON_ID for $DIR: running (pid $pid)"
    [[ ! -f "$DIR/env" ]] || print_env
}

(($# >= 2)) || usage
action="$1"
case "$action" in start | stop | status) ;; *) usage ;; esac
[[ -n "$2" && "$2" != -* ]] || usage
if [[ "$action" == start ]]; then
    mkdir -p "$2" || die "cannot create directory $2"
elif [[ ! -d "$2" ]]; then
    echo "mon.$MON_ID for $2: not running (no such directory)"
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
