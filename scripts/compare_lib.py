"""Helpers shared by the report programs scripts/compare.sh runs (`PYTHONPATH=scripts python3 - <<'PY'`)."""


def nbytes(s):
    """A size as compare.sh takes it (64, 4k, 1m) in bytes."""
    s = s.strip()
    mult = {"k": 1024, "m": 1 << 20}.get(s[-1].lower(), 1)
    return int(s[:-1] if mult > 1 else s) * mult


def median_run(runs, key):
    """The run holding the median of `key` (the lower middle for an even count), and the spread."""
    ok = sorted((r for r in runs if r.get(key) is not None), key=lambda r: r[key])
    if not ok:
        return None, None
    return ok[(len(ok) - 1) // 2], [ok[0][key], ok[-1][key]]


def fmt(v, spec=".1f"):
    """`v` formatted, or "-" for none."""
    return "-" if v is None else format(v, spec)


def spread(sp, spec=".1f"):
    """A [min, max] spread as min..max, or "-" for none."""
    return "-" if not sp else f"{format(sp[0], spec)}..{format(sp[1], spec)}"


def window_count(raw, tag):
    """(messages the server received, window seconds) of a windowed run (RAW/TAG.count), or None."""
    import re
    try:
        with open(f"{raw}/{tag}.count") as f:
            m = re.match(r"messages (\d+) window_s (\d+)", f.read())
    except OSError:
        return None
    return (int(m.group(1)), int(m.group(2))) if m else (0, None)


def strace_window(raw, tag):
    """Syscalls per message of a windowed run (RAW/TAG.strace, `strace -c -f`), or None."""
    import re
    count = window_count(raw, tag)
    if count is None:
        return None
    try:
        with open(f"{raw}/{tag}.strace") as f:
            text = f.read()
    except OSError:
        return None
    msgs, window_s = count
    total = next((l.split() for l in text.splitlines() if l.rstrip().endswith("total")), None)
    calls = int(total[3]) if total and len(total) > 4 else 0
    top = []
    for l in text.splitlines():
        f = l.split()
        if len(f) >= 5 and re.match(r"^\d+\.\d+$", f[0]) and f[-1] != "total":
            top.append((f[-1], int(f[3])))
    return {"window_s": window_s, "server_messages": msgs, "syscalls": calls,
            "per_message": calls / msgs if msgs else None,
            "top": sorted(top, key=lambda t: -t[1])[:5]}


def tcp_window(raw, tag):
    """The kernel's TCP counters over a windowed run (RAW/TAG.tcp-before, .tcp-after), per message the
    server received: segments out (both ends: loopback) and the delayed ACKs among them, or None."""
    count = window_count(raw, tag)
    if count is None:
        return None

    def counters(path):
        got = {}
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if v.strip().lstrip("-").isdigit():
                    got[k] = int(v)
        return got

    try:
        before, after = counters(f"{raw}/{tag}.tcp-before"), counters(f"{raw}/{tag}.tcp-after")
    except OSError:
        return None
    msgs, window_s = count
    delta = {k: after[k] - before.get(k, 0) for k in ("OutSegs", "DelayedACKs") if k in after}
    per = (lambda k: delta[k] / msgs if msgs and k in delta else None)
    return {"window_s": window_s, "server_messages": msgs, "segments_out": delta.get("OutSegs"),
            "delayed_acks": delta.get("DelayedACKs"), "segments_per_message": per("OutSegs"),
            "delayed_acks_per_message": per("DelayedACKs")}


def load_json(path):
    """A JSON file's contents, or None when it is missing or not JSON."""
    import json
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
