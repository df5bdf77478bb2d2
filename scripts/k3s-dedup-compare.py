#!/usr/bin/env python3
"""k3s-dedup-compare.py - nightly repository growth of cairn beside restic on a k3s-sim dataset.

    scripts/k3s-dedup-compare.py DATASET_DIR [--work DIR] [--cairn PATH] [--restic PATH]
                                  [--components] [--in-place] [--json OUT]

DATASET_DIR comes from ../shared/datasets/k3s-sim.py (e.g. `--scale medium --days 7 --seed 1`).
Like ../shared/datasets/restic-measure.py, each day is copied (hard links) to ONE fixed source
path (every inode new each night; with --in-place, refreshed as rsync does it, so that
unchanged files keep their inodes and ctimes as on a node's own disk), which is backed up as
the next snapshot, by cairn and by restic (compression auto)
alternately, each into its own fresh repository. Growth = on-disk repository growth (du).
With --components, etcd, state.db, pv, nodes and manifests also get repositories of their own
so that e.g. etcd's own day-over-day dedup is visible. Prints growth over nights 2..N as a
share of the nights' raw size, and the ratio cairn/restic, plus wall time and the number of
blobs in cairn's index and the memory `cairn stats` gives for loading it.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time


def du(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def refresh(src, dst):
    """rsync -a --delete src/ dst/ with hard links (the tools only read content)."""
    if os.path.exists(dst):
        shutil.rmtree(dst)
    if os.path.isdir(src):
        shutil.copytree(src, dst, copy_function=os.link, symlinks=True)
    else:
        os.makedirs(dst)
        os.link(src, os.path.join(dst, os.path.basename(src)))


def same_file(a, b):
    """Same size, mtime and bytes (rsync's quick check, then a comparison to be exact)."""
    sa, sb = os.lstat(a), os.lstat(b)
    if (sa.st_size, sa.st_mtime_ns) != (sb.st_size, sb.st_mtime_ns):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def remove(p):
    """Remove whatever is at `p`: a directory tree, or a file or symlink."""
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p)
    else:
        os.unlink(p)


def refresh_in_place(src, dst):
    """rsync -a --delete src/ dst/ as rsync does it: an unchanged file keeps its inode and
    ctime (as on a node's own disk from night to night); a changed or new one is linked anew,
    a vanished one removed, directories keep their inodes and take src's mode and mtime."""
    os.makedirs(dst, exist_ok=True)
    if os.path.isdir(src):
        src_dir, names = src, os.listdir(src)
    else:
        src_dir, names = os.path.dirname(src), [os.path.basename(src)]
    keep = set(names)
    for name in os.listdir(dst):
        if name not in keep:
            remove(os.path.join(dst, name))
    for name in names:
        s, d = os.path.join(src_dir, name), os.path.join(dst, name)
        if os.path.islink(s):
            if not (os.path.islink(d) and os.readlink(d) == os.readlink(s)):
                if os.path.lexists(d):
                    remove(d)
                os.symlink(os.readlink(s), d)
        elif os.path.isdir(s):
            if os.path.lexists(d) and (os.path.islink(d) or not os.path.isdir(d)):
                os.unlink(d)
            refresh_in_place(s, d)
            ss, sd = os.lstat(s), os.lstat(d)
            # Like rsync, only when they differ: setting them changes the directory's ctime.
            if (ss.st_mode, ss.st_mtime_ns) != (sd.st_mode, sd.st_mtime_ns):
                shutil.copystat(s, d, follow_symlinks=False)
        else:
            if os.path.lexists(d):
                if not os.path.islink(d) and os.path.isfile(d) and same_file(s, d):
                    continue
                remove(d)
            os.link(s, d)


def run(cmd, env):
    t0 = time.time()
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode not in (0, 3):
        sys.exit("failed: %s\n%s" % (" ".join(cmd), r.stderr.decode(errors="replace")))
    return time.time() - t0, r.stdout.decode(errors="replace")


COMPONENTS = {
    "etcd": lambda day: os.path.join(day, "etcd"),
    "state.db": lambda day: os.path.join(day, "state.db"),
    "pv": lambda day: os.path.join(day, "pv"),
    "nodes": lambda day: os.path.join(day, "nodes"),
    "manifests": lambda day: os.path.join(day, "manifests"),
}


def series(name, days, work, args, env):
    """Back up each day's `name` component with both tools; return per-tool rows."""
    out = {}
    src = os.path.join(work, "src-" + name)
    repos = {t: os.path.join(work, "repo-%s-%s" % (t, name)) for t in ("cairn", "restic")}
    for r in repos.values():
        shutil.rmtree(r, ignore_errors=True)
    run([args.cairn, "-r", repos["cairn"], "init", "-q"], env)  # default KDF, as restic
    run([args.restic, "-r", repos["restic"], "init", "-q"], env)
    rows = {"cairn": [], "restic": []}
    for i, day in enumerate(days):
        path = COMPONENTS[name](day) if name != "all" else day
        (refresh_in_place if args.in_place else refresh)(path, src)
        raw = du(src)
        # Alternate which tool goes first, so cache warmth favours neither.
        order = ("cairn", "restic") if i % 2 == 0 else ("restic", "cairn")
        for tool in order:
            before = du(repos[tool])
            if tool == "cairn":
                secs, _ = run([args.cairn, "-r", repos[tool], "backup", "-q", "--host", "sim", src], env)
            else:
                secs, _ = run([args.restic, "-r", repos[tool], "backup", "-q", "--host", "sim", src], env)
            rows[tool].append({"day": i + 1, "raw": raw, "growth": du(repos[tool]) - before, "seconds": secs})
    _, stats = run([args.cairn, "-r", repos["cairn"], "stats", "--json"], env)
    st = json.loads(stats.strip().splitlines()[-1])
    out["blobs"] = st.get("blobs")
    out["index_memory"] = st.get("index_memory_bytes")
    out["rows"] = rows
    out["cairn_repo"] = repos["cairn"]
    return out


def summarize(name, res):
    rows = res["rows"]
    raw = sum(r["raw"] for r in rows["cairn"][1:])
    g = {t: sum(r["growth"] for r in rows[t][1:]) for t in rows}
    secs = {t: sum(r["seconds"] for r in rows[t]) for t in rows}
    ratio = g["cairn"] / g["restic"] if g["restic"] else float("nan")
    print("%-10s nights 2-%d raw %8.1f MB | cairn %7.1f MB (%5.2f %%) | restic %7.1f MB (%5.2f %%) | ratio %.2f | time cairn %.0fs restic %.0fs"
          % (name, len(rows["cairn"]), raw / 1e6, g["cairn"] / 1e6, 100 * g["cairn"] / raw, g["restic"] / 1e6,
             100 * g["restic"] / raw, ratio, secs["cairn"], secs["restic"]))
    per_day = " ".join("%d:%.1f/%.1f" % (r["day"], r["growth"] / 1e6, s["growth"] / 1e6)
                       for r, s in zip(rows["cairn"], rows["restic"]))
    print("           per night MB cairn/restic: " + per_day)
    print("           cairn index: %s blobs (~%.1f MB of index memory)" % (res.get("blobs"), (res.get("index_memory") or 0) / 1e6))
    return {"component": name, "blobs": res.get("blobs"), "raw": raw, "growth": g, "ratio": ratio, "seconds": secs, "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--work", default="/var/tmp/cairn-k3s-compare")
    ap.add_argument("--cairn", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "cairn"))
    ap.add_argument("--restic", default=shutil.which("restic") or "restic")
    ap.add_argument("--components", action="store_true")
    ap.add_argument("--in-place", action="store_true",
                    help="refresh the source as rsync does (unchanged files keep their inodes) "
                    "instead of a fresh copy each night")
    ap.add_argument("--json")
    args = ap.parse_args()
    days = sorted(os.path.join(args.dataset, d) for d in os.listdir(args.dataset) if d.startswith("day-"))
    if len(days) < 2:
        sys.exit("need at least two days in " + args.dataset)
    os.makedirs(args.work, exist_ok=True)
    env = dict(os.environ, CAIRN_PASSWORD="x", RESTIC_PASSWORD="x", RESTIC_CACHE_DIR=os.path.join(args.work, "restic-cache"))
    _, v = run([args.cairn, "--version"], env)
    _, rv = run([args.restic, "version"], env)
    print("cairn: %s | restic: %s | dataset: %s (%d nights)" % (v.strip(), rv.strip(), args.dataset, len(days)))
    results = [summarize("all", series("all", days, args.work, args, env))]
    if args.components:
        for name in COMPONENTS:
            results.append(summarize(name, series(name, days, args.work, args, env)))
        e = next(r for r in results if r["component"] == "etcd")
        s = next(r for r in results if r["component"] == "state.db")
        both = (e["growth"]["cairn"] + s["growth"]["cairn"]) / (e["growth"]["restic"] + s["growth"]["restic"])
        print("etcd + state.db ratio cairn/restic: %.2f" % both)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
