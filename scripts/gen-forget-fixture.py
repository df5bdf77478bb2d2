#!/usr/bin/env python3
"""Regenerate engine/tests/data/forget_restic_0.14.json: retention decisions of REAL restic.

Usage (from the repository root; needs `restic` on PATH, python3 >= 3.9 and the system tz
database in /usr/share/zoneinfo):

    python3 scripts/gen-forget-fixture.py [--restic /usr/bin/restic] [--out PATH]

What it does:

1. Builds a fixed list of 108 snapshot descriptions (wall-clock time, time zone, host, tags)
   from hand-picked edge cases plus a deterministic pseudo-random backbone (own LCG, so the
   list does not depend on the Python version). Times are whole seconds and all instants are
   distinct, because `restic backup --time` has 1-second resolution and restic's sort is only
   stable for equal times.
2. Creates a throw-away restic repository in a temp dir and makes one snapshot per entry with
   `TZ=<zone> restic backup --time "YYYY-MM-DD HH:MM:SS" --host H --tag T data` (a tiny file, so
   every snapshot has the same single path). Go only understands zoneinfo names in TZ (no POSIX
   strings), so the zones are names like Europe/Berlin (DST: +01:00/+02:00), America/New_York
   (-05:00/-04:00), Asia/Kolkata (+05:30), Etc/GMT+5 (fixed -05:00; the Etc sign is inverted),
   UTC. The recorded time (with offset) is read back with `restic snapshots --json` and checked
   against the expected one.
3. Runs `TZ=UTC restic forget --dry-run --json <flags>` for every policy and records, per entry,
   K (kept), R (removed) or - (not selected by the --host/--tag filter). TZ=UTC matters: Go
   re-attaches the *local* zone to a parsed time whose offset the local zone uses, and
   keep-within's AddDate would then follow that zone's DST rules instead of the fixed offset.

restic 0.14 specifics: it has no `unlimited` (and `-1` silently keeps nothing), so unlimited
policies are run with a huge count instead (`restic_args` differs from `args` then). It also
predates the rule "a rule with count left at the group's oldest snapshot keeps that snapshot",
so cairn may keep one extra (oldest) snapshot per group; engine/tests/forget_policy.rs allows
exactly that.
"""

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from zoneinfo import ZoneInfo

# ---------------------------------------------------------------------------------------------
# The snapshot list.

BERLIN = "Europe/Berlin"
NEWYORK = "America/New_York"
KOLKATA = "Asia/Kolkata"
UTC = "UTC"
FIXED_M5 = "Etc/GMT+5"  # -05:00 all year
FIXED_P2 = "Etc/GMT-2"  # +02:00 all year

# Hand-picked edge cases: (local time, zone, host, tags, note).
EDGES = [
    # ISO week 2020-W53 spans 2020-12-28 .. 2021-01-03; 2021-W01 starts Monday 2021-01-04.
    ("2020-12-31 12:00:00", UTC, "alpha", [], "Thu, ISO 2020-W53, year 2020"),
    ("2021-01-03 12:00:00", UTC, "alpha", [], "Sun, still ISO 2020-W53, year 2021"),
    ("2021-01-04 08:00:00", UTC, "alpha", ["etcd"], "Mon, ISO 2021-W01"),
    # 2023-01-01 is a Sunday in ISO 2022-W52.
    ("2023-01-01 12:00:00", NEWYORK, "beta", [], "Sun, ISO 2022-W52"),
    ("2023-01-02 08:00:00", NEWYORK, "beta", ["etcd"], "Mon, ISO 2023-W01"),
    # Month boundary that depends on the offset: 00:30 +01:00 is still January in UTC.
    ("2023-01-31 22:00:00", BERLIN, "alpha", ["pv"], "last of January"),
    ("2023-02-01 00:30:00", BERLIN, "alpha", [], "February locally, January 31 in UTC"),
    ("2023-02-14 09:15:00", NEWYORK, "beta", ["manual"], "manual"),
    # Day bucket follows the snapshot's own offset.
    ("2023-06-10 23:30:00", FIXED_M5, "beta", [], "June 10 locally but 04:30Z June 11, newer than the June 11 04:00Z one"),
    ("2023-06-11 04:00:00", UTC, "beta", [], "June 11 locally, 30 min older than the June 10 -05:00 one"),
    ("2023-06-20 20:30:00", FIXED_M5, "beta", ["pv"], "June 20 locally but June 21 01:30Z"),
    ("2023-06-20 23:00:00", UTC, "beta", ["pv"], "June 20 locally too, 2.5h older than the -05:00 one"),
    ("2023-07-04 10:00:00", BERLIN, "alpha", ["manual", "pv"], "manual+pv"),
    # DST end in Berlin (2023-10-29 03:00 -> 02:00).
    ("2023-10-28 12:00:00", BERLIN, "alpha", ["etcd"], "+02:00"),
    ("2023-10-29 12:00:00", BERLIN, "alpha", ["etcd"], "+01:00 after DST end"),
    ("2023-11-11 11:11:11", KOLKATA, "beta", ["manual"], "manual, +05:30"),
    # Year boundary.
    ("2023-12-31 23:59:59", BERLIN, "alpha", ["etcd", "pv"], "last second of 2023"),
    ("2024-01-01 00:00:01", BERLIN, "alpha", ["etcd", "pv"], "first second of 2024"),
    ("2024-01-15 10:00:00", BERLIN, "alpha", ["etcd", "manual"], "manual+etcd"),
    # --tag manual --keep-within 1m: latest manual is 2024-03-31 10:00 -04:00; minus one month
    # is Feb 31 = Mar 2 (leap year) 10:00 -04:00 = 14:00Z in Go; 09:00 -05:00 is exactly that.
    ("2024-03-01 12:00:00", NEWYORK, "beta", ["manual"], "outside 1m (naive clamp would keep)"),
    ("2024-03-02 09:00:00", NEWYORK, "beta", ["manual"], "exactly on the 1m boundary"),
    ("2024-03-02 11:00:00", NEWYORK, "beta", ["manual"], "inside 1m"),
    # DST start in Berlin (2024-03-31 02:00 -> 03:00).
    ("2024-03-30 12:00:00", BERLIN, "alpha", [], "+01:00"),
    ("2024-03-31 12:00:00", BERLIN, "alpha", ["pv"], "+02:00"),
    ("2024-03-31 10:00:00", NEWYORK, "beta", ["manual"], "latest manual, on the 31st"),
    # Several per day and per hour.
    ("2024-05-14 06:05:00", NEWYORK, "beta", ["etcd"], "burst"),
    ("2024-05-14 07:10:00", NEWYORK, "beta", ["etcd"], "burst"),
    ("2024-05-14 07:50:00", NEWYORK, "beta", ["etcd", "pv"], "burst, same hour"),
    ("2024-05-14 13:00:00", NEWYORK, "beta", [], "burst"),
    ("2024-05-14 22:45:00", NEWYORK, "beta", ["etcd"], "burst"),
    # Latest alpha (and overall) is 2024-12-31 20:00 +01:00. Minus 1m = Nov 31 = Dec 1 20:00
    # (Go AddDate); minus 3m = Sep 31 = Oct 1 20:00; minus 30d = Dec 1 20:00; minus 36h =
    # Dec 30 08:00.
    ("2024-09-30 21:00:00", BERLIN, "alpha", [], "outside 3m (a naive clamp to Sep 30 would hit it exactly)"),
    ("2024-10-01 09:00:00", BERLIN, "alpha", ["etcd"], "outside 3m (naive clamp would keep)"),
    ("2024-10-01 21:00:01", BERLIN, "alpha", [], "just inside 3m (19:00:01Z)"),
    ("2024-11-30 15:00:00", BERLIN, "alpha", ["pv"], "outside 1m/30d"),
    ("2024-12-01 10:00:00", BERLIN, "alpha", ["etcd"], "outside 1m (naive clamp would keep)"),
    ("2024-12-01 20:00:00", BERLIN, "alpha", ["etcd"], "exactly on the 1m/30d boundary"),
    ("2024-12-01 20:00:01", BERLIN, "alpha", [], "just inside 1m/30d"),
    # ISO week at the 2024/2025 boundary.
    ("2024-12-29 18:00:00", BERLIN, "alpha", ["etcd", "pv"], "Sun, ISO 2024-W52"),
    ("2024-12-30 04:30:00", KOLKATA, "beta", ["etcd"], "Mon ISO 2025-W01 locally, Sunday in UTC"),
    ("2024-12-30 09:00:00", BERLIN, "alpha", ["etcd"], "Mon, ISO 2025-W01, inside 36h"),
    ("2024-12-31 20:00:00", BERLIN, "alpha", ["etcd", "pv"], "latest, on the 31st"),
]


def lcg(seed):
    state = seed
    while True:
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        yield state >> 33


def backbone(host, seed, start, end, zones, n_max):
    """Irregularly spaced snapshots: bursts on a day, gaps of days to weeks."""
    rnd = lcg(seed)
    tags_choice = [[], [], ["etcd"], ["etcd"], ["pv"], ["etcd", "pv"], ["etcd", "pv"], []]
    gaps = [0, 0, 1, 2, 3, 5, 9, 14, 21, 30, 45, 60]
    day = start
    hour = 5 + next(rnd) % 6
    out = []
    k = 0
    while day < end and len(out) < n_max:
        zone = zones[k % len(zones)]
        minute = next(rnd) % 60
        second = next(rnd) % 60
        tags = tags_choice[next(rnd) % len(tags_choice)]
        out.append((f"{day.isoformat()} {hour:02}:{minute:02}:{second:02}", zone, host, tags, ""))
        k += 1
        gap = gaps[next(rnd) % len(gaps)]
        if gap == 0 and hour < 21:
            hour += 1 + next(rnd) % min(4, 22 - hour)
        else:
            day += dt.timedelta(days=max(gap, 1))
            hour = 4 + next(rnd) % 19  # 04..22: never inside a DST transition hour
    return out


def build_entries():
    entries = list(EDGES)
    alpha_zones = [BERLIN] * 6 + [UTC]
    beta_zones = [NEWYORK, KOLKATA, NEWYORK, FIXED_P2, NEWYORK, FIXED_M5, KOLKATA]
    entries += backbone("alpha", 11, dt.date(2023, 1, 5), dt.date(2024, 11, 25), alpha_zones, 36)
    entries += backbone("beta", 23, dt.date(2023, 1, 5), dt.date(2024, 12, 20), beta_zones, 36)
    out = []
    for local, zone, host, tags, note in entries:
        naive = dt.datetime.strptime(local, "%Y-%m-%d %H:%M:%S")
        z = ZoneInfo(zone)
        a, b = naive.replace(tzinfo=z, fold=0), naive.replace(tzinfo=z, fold=1)
        if a.utcoffset() != b.utcoffset():
            sys.exit(f"{local} {zone} is ambiguous or does not exist")
        off = int(a.utcoffset().total_seconds())
        unix = int(a.timestamp())
        sign = "+" if off >= 0 else "-"
        rfc = f"{naive.isoformat()}{sign}{abs(off) // 3600:02}:{abs(off) % 3600 // 60:02}"
        out.append({"time": rfc, "unix": unix, "offset": off, "zone": zone, "local": local,
                    "host": host, "tags": sorted(tags), "note": note})
    out.sort(key=lambda e: e["unix"])
    unix = [e["unix"] for e in out]
    if len(set(unix)) != len(unix):
        sys.exit("two entries share an instant")
    return out


# ---------------------------------------------------------------------------------------------
# Policies: `args` are cairn's (and restic's) forget flags; `restic_args` only when restic 0.14
# needs something else (it has no `unlimited`). Default --group-by is host,paths as in restic.

U = "unlimited"
BIG = "1000000"
POLICIES = [
    ("last 1", ["--keep-last", "1"]),
    ("last 5", ["--keep-last", "5"]),
    ("last 500 (more than there are)", ["--keep-last", "500"]),
    ("last unlimited", ["--keep-last", U]),
    ("hourly 3", ["--keep-hourly", "3"]),
    ("hourly 50", ["--keep-hourly", "50"]),
    ("hourly unlimited, one group", ["--keep-hourly", U, "--group-by", ""]),
    ("daily 1", ["--keep-daily", "1"]),
    ("daily 7", ["--keep-daily", "7"]),
    ("daily 100, one group", ["--keep-daily", "100", "--group-by", ""]),
    ("daily unlimited", ["--keep-daily", U]),
    ("weekly 4", ["--keep-weekly", "4"]),
    ("weekly 30", ["--keep-weekly", "30"]),
    ("weekly unlimited, one group", ["--keep-weekly", U, "--group-by", ""]),
    ("monthly 3", ["--keep-monthly", "3"]),
    ("monthly 12", ["--keep-monthly", "12"]),
    ("monthly unlimited", ["--keep-monthly", U]),
    ("yearly 1", ["--keep-yearly", "1"]),
    ("yearly 3", ["--keep-yearly", "3"]),
    ("yearly 10, one group", ["--keep-yearly", "10", "--group-by", ""]),
    ("daily 7 weekly 4 monthly 12", ["--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12"]),
    ("last 3 daily 7 weekly 5 monthly 12 yearly 5",
     ["--keep-last", "3", "--keep-daily", "7", "--keep-weekly", "5", "--keep-monthly", "12", "--keep-yearly", "5"]),
    ("hourly 24 daily 14, one group", ["--keep-hourly", "24", "--keep-daily", "14", "--group-by", ""]),
    ("within 1y2m", ["--keep-within", "1y2m"]),
    ("within 30d", ["--keep-within", "30d"]),
    ("within 3m", ["--keep-within", "3m"]),
    ("within 36h", ["--keep-within", "36h"]),
    ("within 1m (latest on the 31st)", ["--keep-within", "1m"]),
    ("within 2y, one group", ["--keep-within", "2y", "--group-by", ""]),
    ("within 1y5m7d2h", ["--keep-within", "1y5m7d2h"]),
    ("within-hourly 3d", ["--keep-within-hourly", "3d"]),
    ("within-daily 7d", ["--keep-within-daily", "7d"]),
    ("within-weekly 2m", ["--keep-within-weekly", "2m"]),
    ("within-monthly 1y", ["--keep-within-monthly", "1y"]),
    ("within-yearly 5y, one group", ["--keep-within-yearly", "5y", "--group-by", ""]),
    ("within-daily 1m within-weekly 6m within-monthly 2y",
     ["--keep-within-daily", "1m", "--keep-within-weekly", "6m", "--keep-within-monthly", "2y"]),
    ("tag etcd", ["--keep-tag", "etcd"]),
    ("tag etcd,pv (both)", ["--keep-tag", "etcd,pv"]),
    ("tag manual or pv", ["--keep-tag", "manual", "--keep-tag", "pv"]),
    ("tag manual + last 2", ["--keep-tag", "manual", "--keep-last", "2"]),
    ("within 1y + monthly 6 + tag manual", ["--keep-within", "1y", "--keep-monthly", "6", "--keep-tag", "manual"]),
    ("group by host: daily 3", ["--group-by", "host", "--keep-daily", "3"]),
    ("group by host,tags: last 2", ["--group-by", "host,tags", "--keep-last", "2"]),
    ("group by host,tags: monthly 2 yearly 1", ["--group-by", "host,tags", "--keep-monthly", "2", "--keep-yearly", "1"]),
    ("group by tags: last 1 weekly 2", ["--group-by", "tags", "--keep-last", "1", "--keep-weekly", "2"]),
    ("one group: weekly 6", ["--group-by", "", "--keep-weekly", "6"]),
    ("filter tag etcd: daily 5", ["--tag", "etcd", "--keep-daily", "5"]),
    ("filter tag etcd,pv, one group: weekly 3", ["--tag", "etcd,pv", "--group-by", "", "--keep-weekly", "3"]),
    ("filter host beta: weekly 3", ["--host", "beta", "--keep-weekly", "3"]),
    ("filter host alpha: within 1m", ["--host", "alpha", "--keep-within", "1m"]),
    ("filter tag manual, one group: within 1m (latest manual on Mar 31)",
     ["--tag", "manual", "--group-by", "", "--keep-within", "1m"]),
    ("filter tag manual or pv, one group: last 4", ["--tag", "manual", "--tag", "pv", "--group-by", "", "--keep-last", "4"]),
]


def restic_args(args):
    out = list(args)
    for i in range(len(out) - 1):
        if out[i].startswith("--keep-") and out[i + 1] == U:
            out[i + 1] = BIG
    return out


# ---------------------------------------------------------------------------------------------


def run(cmd, env, capture=True):
    r = subprocess.run(cmd, env=env, capture_output=capture, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--restic", default="restic")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                  "engine", "tests", "data", "forget_restic_0.14.json"))
    opts = ap.parse_args()
    entries = build_entries()
    version = run([opts.restic, "version"], dict(os.environ)).strip()
    with tempfile.TemporaryDirectory(prefix="cairn-forget-fixture-") as tmp:
        env = dict(os.environ)
        env.update({"RESTIC_REPOSITORY": os.path.join(tmp, "repo"), "RESTIC_PASSWORD": "fixture",
                    "RESTIC_CACHE_DIR": os.path.join(tmp, "cache")})
        os.mkdir(os.path.join(tmp, "data"))
        with open(os.path.join(tmp, "data", "f"), "w") as f:
            f.write("tiny\n")
        run([opts.restic, "init", "-q"], env)
        for i, e in enumerate(entries):
            cmd = [opts.restic, "backup", "-q", "--time", e["local"], "--host", e["host"]]
            for t in e["tags"]:
                cmd += ["--tag", t]
            r = subprocess.run(cmd + ["data"], env=dict(env, TZ=e["zone"]), cwd=tmp, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"backup {i} failed: {r.stderr}")
            if (i + 1) % 20 == 0 or i + 1 == len(entries):
                print(f"backup {i + 1}/{len(entries)}", file=sys.stderr, flush=True)
        snaps = json.loads(run([opts.restic, "snapshots", "--json"], dict(env, TZ="UTC")))
        by_key = {}
        for s in snaps:
            # Go writes +00:00 as Z; compare instant and offset instead of the text.
            t = dt.datetime.fromisoformat(s["time"].replace("Z", "+00:00"))
            key = (int(t.timestamp()), int(t.utcoffset().total_seconds()), s["hostname"],
                   tuple(sorted(s.get("tags") or [])))
            if key in by_key:
                sys.exit(f"duplicate snapshot {key}")
            by_key[key] = s["id"]
        id_to_idx = {}
        for i, e in enumerate(entries):
            key = (e["unix"], e["offset"], e["host"], tuple(e["tags"]))
            if key not in by_key:
                sys.exit(f"entry {i} {key} not recorded as expected (offset wrong?); restic has {sorted(by_key)}")
            id_to_idx[by_key[key]] = i
        if len(id_to_idx) != len(snaps):
            sys.exit("restic has snapshots that are not in the list")
        policies = []
        for name, args in POLICIES:
            rargs = restic_args(args)
            out = json.loads(run([opts.restic, "forget", "--dry-run", "--json"] + rargs, dict(env, TZ="UTC")))
            result = ["-"] * len(entries)
            for g in out:
                for s in g.get("keep") or []:
                    result[id_to_idx[s["id"]]] = "K"
                for s in g.get("remove") or []:
                    result[id_to_idx[s["id"]]] = "R"
            p = {"name": name, "args": args}
            if rargs != args:
                p["restic_args"] = rargs
            p["result"] = "".join(result)
            policies.append(p)
            if len(policies) % 10 == 0 or len(policies) == len(POLICIES):
                print(f"forget {len(policies)}/{len(POLICIES)}", file=sys.stderr, flush=True)
    last = max(e["unix"] for e in entries)
    fixture = {
        "generated_by": "scripts/gen-forget-fixture.py (python3 scripts/gen-forget-fixture.py --restic /usr/bin/restic)",
        "restic_version": version,
        "how": "one `TZ=<zone> restic backup --time <local> --host <host> --tag <tag>...` per entry "
               "(all of one tiny path), then `TZ=UTC restic forget --dry-run --json <restic_args or args>` "
               "per policy; result[i] is K (kept), R (removed) or - (filtered out) for entry i. "
               "restic 0.14 has no `unlimited` (run as 1000000) and no keep-the-oldest rule.",
        "now_unix": last + 14 * 86400,
        "entries": [{k: e[k] for k in ("time", "unix", "offset", "host", "tags", "note") if k != "note" or e["note"]}
                    for e in entries],
        "policies": policies,
    }
    write(opts.out, fixture)
    print(f"wrote {opts.out}: {len(entries)} entries, {len(policies)} policies", file=sys.stderr)


def write(path, fixture):
    """JSON with one entry / policy per line, so diffs stay readable."""
    lines = ["{"]
    for k in ("generated_by", "restic_version", "how", "now_unix"):
        lines.append(f"  {json.dumps(k)}: {json.dumps(fixture[k])},")
    for k in ("entries", "policies"):
        lines.append(f"  {json.dumps(k)}: [")
        items = fixture[k]
        for i, it in enumerate(items):
            lines.append("    " + json.dumps(it) + ("," if i + 1 < len(items) else ""))
        lines.append("  ]" + ("," if k == "entries" else ""))
    lines.append("}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
