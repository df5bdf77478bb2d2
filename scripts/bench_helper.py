#!/usr/bin/env python3
"""Helpers for scripts/bench-compare.sh (Python 3 stdlib only).

Subcommands:
  copy-capped DST CAP_BYTES SRC...   cp -a whole subtrees of SRC... into DST until CAP_BYTES
  mixed OUT SIZE_BYTES SEED SRC...   one file: real files from SRC... concatenated, with 1/4
                                     of the bytes pseudo-random (incompressible) blocks
  stats PATH...                      "<files> <bytes>": regular files and their apparent size
  modify PATH UNDO_JSON SEED PCT     touch PCT % of the regular files: append a line or
                                     rewrite a few bytes, bump mtime; record how to undo
  undo UNDO_JSON                     undo `modify` (content and mtime)
  parse-time FILE                    last line of /usr/bin/time -f '%e %U %S %M %w' output
  data-added TOOL FILE               data_added (bytes) from a backup's --json output
  report CSV OUT_MD TITLE            medians per (measurement, tool) -> markdown table
  speedup-report CSV OUT_MD TITLE    medians per thread count -> markdown table
"""

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time


def du(path):
    """Apparent size of the regular files (and symlinks) under `path`."""
    if os.path.islink(path) or not os.path.isdir(path):
        try:
            return os.lstat(path).st_size
        except OSError:
            return 0
    total = 0
    for root, dirs, files in os.walk(path):
        for n in files:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
            except OSError:
                pass
    return total


def copy_capped(dst, cap, srcs):
    """Copy whole subtrees with `cp -a` while they fit; descend into those that do not.

    Each source is `PATH` or `PATH:FRACTION`; sources are taken in order, each up to its
    fraction of `cap` plus whatever earlier sources left unused (a source without a fraction
    gets all that is left)."""
    os.makedirs(dst, exist_ok=True)
    used_total = 0
    carry = 0

    def take(src, dstdir, left):
        """Copy what fits of `src` into `dstdir`; returns bytes copied."""
        if left <= 0:
            return 0
        size = du(src)
        target = os.path.join(dstdir, os.path.basename(src.rstrip("/")) or "root")
        if size <= left:
            r = subprocess.run(["cp", "-a", "--", src, target], stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                sys.stderr.write(f"cp -a {src}: {r.stderr.strip()[:200]}\n")
            return size
        used = 0
        if os.path.isdir(src) and not os.path.islink(src):
            os.makedirs(target, exist_ok=True)
            try:
                kids = sorted(os.listdir(src))
            except OSError:
                return 0
            for k in kids:
                used += take(os.path.join(src, k), target, left - used)
                if left - used <= 0:
                    break
            shutil.copystat(src, target, follow_symlinks=False)
        # a single file larger than what is left: skipped
        return used

    for spec in srcs:
        path, _, frac = spec.rpartition(":") if ":" in spec else (spec, "", "")
        budget = (int(cap * float(frac)) + carry) if frac else (cap - used_total)
        budget = min(budget, cap - used_total)
        if not os.path.exists(path) or budget <= 0:
            carry = budget
            continue
        # Keep the source's path below dst (dst/usr/lib/..., dst/root/.rustup/...).
        parent = os.path.join(dst, os.path.dirname(os.path.abspath(path)).lstrip("/"))
        os.makedirs(parent, exist_ok=True)
        got = take(path, parent, budget)
        used_total += got
        carry = budget - got
        sys.stderr.write(f"  {path}: {got / 1e6:.0f} MB\n")
    print(used_total)


def iter_files(srcs):
    """Regular files under `srcs`, sorted, each inode once."""
    seen = set()
    for s in srcs:
        if os.path.isfile(s) and not os.path.islink(s):
            yield s
            continue
        for root, dirs, files in os.walk(s):
            dirs.sort()
            for n in sorted(files):
                p = os.path.join(root, n)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if not os.path.isfile(p) or os.path.islink(p) or (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                yield p


def mixed(out, size, seed, srcs):
    """Real file content, interleaved with random blocks (25 % of the bytes), no repetition
    of real content (when the sources run out, the rest is text-like plus random)."""
    rng = random.Random(seed)
    written = 0
    real_since_random = 0
    files = iter_files(srcs)
    with open(out, "wb") as f:
        while written < size:
            if real_since_random >= 3 * (4 << 20):
                n = min(rng.randint(1 << 20, 7 << 20), size - written)
                f.write(rng.randbytes(n))
                written += n
                real_since_random = 0
                continue
            p = next(files, None)
            if p is None:
                # Out of real files: synthetic text-like lines (compressible, not repeated).
                n = min(4 << 20, size - written)
                lines = []
                got = 0
                while got < n:
                    line = "%d %s %08x %s\n" % (rng.randint(0, 1 << 40), rng.choice(["GET", "PUT", "POST", "DELETE"]),
                                                rng.getrandbits(32), "/".join(rng.choice(["api", "v1", "pods", "ns", "kube", "data"]) for _ in range(rng.randint(2, 6))))
                    lines.append(line)
                    got += len(line)
                b = "".join(lines).encode()[:n]
                f.write(b)
                written += len(b)
                real_since_random += len(b)
                continue
            try:
                with open(p, "rb") as src:
                    data = src.read(size - written)
            except OSError:
                continue
            f.write(data)
            written += len(data)
            real_since_random += len(data)
    print(written)


def stats(paths):
    files = 0
    total = 0
    for p in paths:
        if os.path.isfile(p) and not os.path.islink(p):
            files += 1
            total += os.path.getsize(p)
            continue
        for root, dirs, fs in os.walk(p):
            for n in fs:
                q = os.path.join(root, n)
                try:
                    st = os.lstat(q)
                except OSError:
                    continue
                if os.path.isfile(q) and not os.path.islink(q):
                    files += 1
                    total += st.st_size
    print(files, total)


def modify(path, undo_json, seed, pct):
    rng = random.Random(seed)
    files = list(iter_files([path])) if os.path.isdir(path) else [path]
    n = max(1, round(len(files) * pct / 100.0))
    chosen = sorted(rng.sample(files, n))
    undo = []
    changed_bytes = 0
    now = time.time()
    for i, p in enumerate(chosen):
        st = os.stat(p)
        rec = {"path": p, "size": st.st_size, "atime": st.st_atime_ns, "mtime": st.st_mtime_ns, "mode": st.st_mode}
        if st.st_size >= 64 and i % 2 == 1:
            # rewrite 16 bytes somewhere inside
            off = rng.randrange(0, st.st_size - 16)
            with open(p, "r+b") as f:
                f.seek(off)
                old = f.read(16)
                f.seek(off)
                f.write(bytes(b ^ 0xFF for b in old))
            rec["offset"] = off
            rec["old"] = old.hex()
            rec["how"] = "rewrite"
        else:
            if not os.access(p, os.W_OK):
                os.chmod(p, st.st_mode | 0o200)
            with open(p, "ab") as f:
                f.write(("# cairn-bench modification %d %d\n" % (seed, i)).encode())
            os.chmod(p, st.st_mode & 0o7777)
            rec["how"] = "append"
        changed_bytes += st.st_size
        # Bump mtime so that both tools see a change even at 1 s mtime granularity.
        os.utime(p, ns=(st.st_atime_ns, int((now + 2) * 1e9)))
        undo.append(rec)
    with open(undo_json, "w") as f:
        json.dump(undo, f)
    print(len(chosen), len(files), changed_bytes)


def undo(undo_json):
    if not os.path.exists(undo_json):
        return
    with open(undo_json) as f:
        recs = json.load(f)
    for r in recs:
        p = r["path"]
        if r["how"] == "rewrite":
            with open(p, "r+b") as f:
                f.seek(r["offset"])
                f.write(bytes.fromhex(r["old"]))
        else:
            os.truncate(p, r["size"])
        os.utime(p, ns=(r["atime"], r["mtime"]))
    os.remove(undo_json)


def parse_time(fn):
    with open(fn) as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    # The last line is ours; earlier lines may be "Command exited with non-zero status".
    print(" ".join(lines[-1].split()))


def data_added(tool, fn):
    val = ""
    with open(fn, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if o.get("message_type") == "summary" and "data_added" in o:
                val = o["data_added"]
    print(val if val != "" else "nan")


def load_csv(fn):
    rows = []
    with open(fn) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            rep, tool, meas, val = line.split(",", 3)
            rows.append((int(rep), tool, meas, val))
    return rows


def fmt(v):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return "%.0f" % v
    if abs(v) >= 10:
        return "%.1f" % v
    return "%.2f" % v


def med(vals):
    vals = [v for v in vals if v == v]  # drop NaN
    if not vals:
        return None
    return statistics.median(vals)


def report(csv, out_md, title):
    rows = load_csv(csv)
    order = []
    data = {}
    for rep, tool, meas, val in rows:
        if meas not in order:
            order.append(meas)
        try:
            x = float(val)
        except ValueError:
            x = float("nan")
        data.setdefault((meas, tool), []).append(x)
    reps = len({r[0] for r in rows})
    lines = [f"### {title}", "",
             f"median of {reps} repetition(s); ratio = cairn / restic (for times and sizes < 1 means cairn is better; for MB/s > 1)", "",
             "| measurement | cairn | restic | ratio cairn/restic | cairn runs | restic runs |",
             "|---|---:|---:|---:|---|---|"]
    for meas in order:
        c = med(data.get((meas, "cairn"), []))
        r = med(data.get((meas, "restic"), []))
        ratio = (c / r) if (c is not None and r not in (None, 0)) else None
        runs_c = " ".join(fmt(v) for v in data.get((meas, "cairn"), [])) or "n/a"
        runs_r = " ".join(fmt(v) for v in data.get((meas, "restic"), [])) or "n/a"
        lines.append(f"| {meas} | {fmt(c)} | {fmt(r)} | {('%.2f' % ratio) if ratio is not None else 'n/a'} | {runs_c} | {runs_r} |")
    text = "\n".join(lines) + "\n"
    with open(out_md, "a") as f:
        f.write(text + "\n")
    print(text)


def speedup_report(csv, out_md, title):
    rows = load_csv(csv)
    data = {}
    order = []
    for rep, tool, meas, val in rows:
        if meas not in order:
            order.append(meas)
        data.setdefault((meas, tool), []).append(float(val))
    tools = sorted({r[1] for r in rows}, key=lambda t: int(t.split("=")[1]))
    lines = [f"### {title}", "", "| measurement | " + " | ".join(tools) + " | speed-up (" + tools[0] + " / " + tools[-1] + ") |",
             "|---|" + "---:|" * (len(tools) + 1)]
    lines[2] = lines[2].replace(" speed-up (", " speed-up, wall time (")
    for meas in order:
        ms = [med(data.get((meas, t), [])) for t in tools]
        sp = None
        if meas.endswith("wall s") and ms[0] is not None and ms[-1]:
            sp = ms[0] / ms[-1]
        elif meas.endswith("MB/s") and ms[0] and ms[-1] is not None:
            sp = ms[-1] / ms[0]
        lines.append(f"| {meas} | " + " | ".join(fmt(m) for m in ms) + f" | {('%.2f' % sp) if sp else 'n/a'} |")
    text = "\n".join(lines) + "\n"
    with open(out_md, "a") as f:
        f.write(text + "\n")
    print(text)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "copy-capped":
        copy_capped(args[0], int(args[1]), args[2:])
    elif cmd == "mixed":
        mixed(args[0], int(args[1]), int(args[2]), args[3:])
    elif cmd == "stats":
        stats(args)
    elif cmd == "modify":
        modify(args[0], args[1], int(args[2]), float(args[3]))
    elif cmd == "undo":
        undo(args[0])
    elif cmd == "parse-time":
        parse_time(args[0])
    elif cmd == "data-added":
        data_added(args[0], args[1])
    elif cmd == "report":
        report(args[0], args[1], args[2])
    elif cmd == "speedup-report":
        speedup_report(args[0], args[1], args[2])
    else:
        sys.exit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    main()
