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
