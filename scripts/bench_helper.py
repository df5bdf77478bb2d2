#!/usr/bin/env python3
"""Helpers for scripts/bench-compare.sh (Python 3 stdlib only).

Subcommands:
  copy-capped DST CAP_BYTES SRC...   cp -a whole subtrees of SRC... into DST until CAP_BYTES
  mixed OUT SIZE_BYTES SEED SRC...   one file: real files from SRC... concatenated, with 1/4
                                     of the bytes pseudo-random (incompressible) blocks
  files DIR N SEED                   N small files of compressible text in a nested tree
                                     (deterministic for N and SEED; progress on stderr)
  stats PATH...                      "<files> <bytes>": regular files and their apparent size
  modify PATH UNDO_JSON SEED PCT     touch PCT % of the regular files: append a line or
                                     rewrite a few bytes, bump mtime; record how to undo
  undo UNDO_JSON                     undo `modify` (content and mtime)
  parse-time FILE                    last line of /usr/bin/time -f '%e %U %S %M %w' output
  data-added TOOL FILE               data_added (bytes) from a backup's --json output
  report CSV OUT_MD TITLE            medians per (measurement, tool) -> markdown table
                                     (tools cairn, restic and, where recorded, cp-a)
  speedup-report CSV OUT_MD TITLE    medians per thread count -> markdown table
"""

import itertools
import json
import math
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


def gen_files(top, n, seed):
    """A tree of `n` small files shaped like a persistent volume or a source checkout.

    Directories: leaf directories of ~100-300 files, up to 4 levels of ~20-50 subdirectories
    (fewer levels and a smaller fan-out for small `n`), a few files in the inner directories.
    Sizes: log-normal, median 1.5 KB, clipped to 50 B .. 16 KiB. Content: lines of words from
    a generated vocabulary (Zipf-like frequencies), cut from a shared pool at random offsets,
    with a random-token line per KiB so files differ; ~2 % of the files are exact copies of
    an earlier file. Everything depends only on `n` and `seed`."""
    rng = random.Random(seed)
    t0 = time.time()
    # -- vocabulary and a pool of text lines
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    lw = [12.0, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0, 2.0,
          1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07]
    vocab = set()
    while len(vocab) < 6000:
        vocab.add("".join(rng.choices(letters, weights=lw, k=rng.randint(2, 11))))
    vocab = sorted(vocab)
    rng.shuffle(vocab)
    vocab += ["{", "}", "=", ":", "-", "return", "if", "the", "of", "and", "error", "value"]
    cum = list(itertools.accumulate(1.0 / (i + 1) ** 1.07 for i in range(len(vocab))))
    words = rng.choices(vocab, cum_weights=cum, k=2_400_000)
    indents = ["", "", "", "  ", "    ", "    ", "        ", "\t", "\t\t", "# ", "// "]
    lines = []
    i = 0
    while i < len(words):
        k = rng.randint(1, 14)
        lines.append(rng.choice(indents) + " ".join(words[i:i + k]))
        if rng.random() < 0.15:
            lines.append("%s = %d" % (words[i], rng.randrange(100000)))
        if rng.random() < 0.05:
            lines.append("")
        i += k
    pool = ("\n".join(lines) + "\n").encode()
    del words, lines
    plen = len(pool)
    # Line starts, so that every cut begins at a line.
    starts = []
    p = pool.find(b"\n")
    while 0 <= p < plen - 20000:
        starts.append(p + 1)
        p = pool.find(b"\n", p + 1)

    # -- directory tree
    leaves = max(1, round(n / 200))
    levels = 1
    while levels < 4 and leaves ** (1.0 / levels) > 50:
        levels += 1
    if levels < 2 and leaves >= 9:
        levels = 2
    dirnames = vocab[:4000]
    dirs = []  # (relative path, weight of files)

    def tree(rel, level, want):
        """`want` leaf directories below `rel` (the fan-out varies, the total stays close)."""
        if level == levels:
            dirs.append((rel, rng.uniform(100, 300)))
            return
        if level > 0:
            dirs.append((rel, rng.uniform(0, 20)))  # a few files (README, config) inside
        k = max(1, round(want ** (1.0 / (levels - level)) * rng.uniform(0.7, 1.3)))
        for j in range(k):
            tree(os.path.join(rel, "%s-%d" % (rng.choice(dirnames), j)), level + 1, want / k)

    tree("", 0, leaves)
    total_w = sum(w for _, w in dirs)
    exts = [".txt", ".go", ".rs", ".py", ".json", ".yaml", ".log", ".md", ".c", ".h", ".conf", ""]
    os.makedirs(top, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    mu, sigma = math.log(1500), 1.0
    lognorm = rng.lognormvariate
    randrange = rng.randrange
    getrandbits = rng.getrandbits
    rand = rng.random
    nstarts = len(starts)
    recent = []
    made = 0
    nbytes = 0
    cw = 0.0
    for rel, w in dirs:
        cw += w
        count = round(n * cw / total_w) - made
        if count <= 0:
            continue
        d = os.path.join(top, rel)
        os.makedirs(d, exist_ok=True)
        stem = rng.choice(dirnames)
        for j in range(count):
            if recent and rand() < 0.02:
                data = recent[randrange(len(recent))]
            else:
                size = int(lognorm(mu, sigma))
                size = 50 if size < 50 else (16384 if size > 16384 else size)
                parts = [b"%016x %s\n" % (getrandbits(64), stem.encode())]
                got = len(parts[0])
                while got < size:
                    s = starts[randrange(nstarts)]
                    seg = pool[s:s + min(size - got, 1024)]
                    parts.append(seg)
                    parts.append(b"\n%x %d\n" % (getrandbits(48), randrange(1 << 20)))
                    got += len(seg) + 22
                data = b"".join(parts)[:size]
                if len(recent) < 256:
                    recent.append(data)
                else:
                    recent[randrange(256)] = data
            fd = os.open("%s/%s_%d%s" % (d, stem, j, exts[j % len(exts)]), flags, 0o644)
            os.write(fd, data)
            os.close(fd)
            nbytes += len(data)
            made += 1
            if made % 100000 == 0:
                sys.stderr.write("  files: %d of %d, %.0f MB, %.0f s\n" % (made, n, nbytes / 1e6, time.time() - t0))
    sys.stderr.write("  files: %d in %d directories, %.0f MB, %.0f s\n" % (made, len(dirs), nbytes / 1e6, time.time() - t0))
    print(made, nbytes)


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
    # Peak RSS right after the wall time of the same phase (older CSVs recorded it later).
    for meas in [m for m in order if m.endswith(": peak RSS MiB")]:
        wall = meas[: -len("peak RSS MiB")] + "wall s"
        if wall in order:
            order.remove(meas)
            order.insert(order.index(wall) + 1, meas)
    reps = len({r[0] for r in rows})
    # The `cp -a` reference (tool "cp-a", restore rows only) gets its own columns when the
    # CSV has it (older CSVs do not).
    has_cp = any(tool == "cp-a" for _, tool, _, _ in rows)
    head = "| measurement | cairn | restic | ratio cairn/restic |"
    rule = "|---|---:|---:|---:|"
    if has_cp:
        head += " cp -a | ratio cairn/cp -a |"
        rule += "---:|---:|"
    head += " cairn runs | restic runs |" + (" cp -a runs |" if has_cp else "")
    rule += "---|---|" + ("---|" if has_cp else "")
    note = "ratio = cairn / restic (for times and sizes < 1 means cairn is better; for MB/s > 1)"
    if has_cp:
        note += "; cp -a = `cp -a` of the data set into an empty dir, the floor for a restore"
    lines = [f"### {title}", "", f"median of {reps} repetition(s); {note}", "", head, rule]

    def runs(meas, tool):
        return " ".join(fmt(v) for v in data.get((meas, tool), [])) or "n/a"

    # Measurements only the first-backup references have go to their own table.
    order = [m for m in order if any((m, t) in data for t in ("cairn", "restic", "cp-a"))]
    for meas in order:
        c = med(data.get((meas, "cairn"), []))
        r = med(data.get((meas, "restic"), []))
        ratio = (c / r) if (c is not None and r not in (None, 0)) else None
        row = f"| {meas} | {fmt(c)} | {fmt(r)} | {('%.2f' % ratio) if ratio is not None else 'n/a'} |"
        if has_cp:
            cp = med(data.get((meas, "cp-a"), []))
            cratio = (c / cp) if (meas.endswith("wall s") and c is not None and cp) else None
            row += f" {fmt(cp) if cp is not None else ''} | {('%.2f' % cratio) if cratio is not None else ''} |"
        row += f" {runs(meas, 'cairn')} | {runs(meas, 'restic')} |"
        if has_cp:
            row += f" {runs(meas, 'cp-a') if (meas, 'cp-a') in data else ''} |"
        lines.append(row)
    lines += zstd_reference_table(data)
    text = "\n".join(lines) + "\n"
    with open(out_md, "a") as f:
        f.write(text + "\n")
    print(text)


def zstd_reference_table(data):
    """The first-backup references (tools "zstd-L", see bench-compare.sh --zstd-ref) as a second
    table: what reading and compressing every byte once costs, beside both tools."""
    levels = sorted({t for (_, t) in data if t.startswith("zstd-")}, key=lambda t: int(t[5:]))
    if not levels:
        return []

    def m(meas, tool):
        return med(data.get((meas, tool), []))

    def ratio(a, b):
        return "%.2f" % (a / b) if a is not None and b else "n/a"

    wall, cpu, stored = "first backup: wall s", "first backup: CPU s (user+sys)", "first backup: stored MB"
    cw, rw, rs = m(wall, "cairn"), m(wall, "restic"), m(stored, "restic")
    lines = [
        "",
        "First-backup references, same run. `tar | zstd -L`: zstd's own tool reads the tree and "
        "compresses every byte once as one stream on every core, and does nothing else (no "
        "chunking, hashing, encryption or writing; it does pay for the pipe). Compression alone: "
        "zstd's in-memory benchmark (`zstd -b -B1M`, one core, measured once) on the same bytes; "
        "the data set at that speed on every core is the compression stage by itself, a floor "
        "under any backup that compresses at that level. \"stored\" is the repository after the "
        "first backup (the zstd output "
        f"for tar | zstd). cairn first backup {fmt(cw)} s, {fmt(m(stored, 'cairn'))} MB; restic "
        f"{fmt(rw)} s, {fmt(rs)} MB.",
        "",
        "| zstd level | tar \\| zstd: wall s | CPU s | stored MB | stored / restic's | "
        "cairn wall / tar \\| zstd wall | restic wall / 4 | compression alone: MB/s on one core | "
        "compression alone: wall s on every core | tar \\| zstd runs (wall s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    alone, alone_wall = "compression alone: MB/s on one core", "compression alone: wall s on every core"
    for t in levels:
        w = m(wall, t)
        runs = " ".join(fmt(v) for v in data.get((wall, t), []))
        lines.append(
            f"| zstd -{t[5:]} | {fmt(w)} | {fmt(m(cpu, t))} | {fmt(m(stored, t))} | "
            f"{ratio(m(stored, t), rs)} | {ratio(cw, w)} | "
            f"{fmt(rw / 4) if rw else 'n/a'} | {fmt(m(alone, t))} | {fmt(m(alone_wall, t))} | {runs} |"
        )
    return lines


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
    elif cmd == "files":
        gen_files(args[0], int(args[1]), int(args[2]))
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
