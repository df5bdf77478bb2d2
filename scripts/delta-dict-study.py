#!/usr/bin/env python3
"""Would compressing a night's new database pages against their previous versions pay?

Measures one candidate of issue #17 ("zstd dictionaries"): the new pages of each database file
(etcd snapshots at 4 KiB, SQLite at its page size, PostgreSQL at 8 KiB; pages already seen on
an earlier night are deduplicated away) and the changed small files (<= 32 KiB) of each night
are compressed in 1 MiB groups, as format 2 seals them, once alone and once with the same
file's previous-night bytes at the same offsets as a raw-content zstd dictionary (what a
"delta group" that names its base blobs would store). Pages, not SQLite cells: the absolute
sizes are above what cairn stores; the ratio between the two columns is the figure.

    pip install zstandard
    python3 scripts/delta-dict-study.py K3S_SIM_DIR [--level 3]
"""
import argparse
import hashlib
import os
import re
from collections import defaultdict

import zstandard as zstd

GROUP = 1 << 20


def files(root, day):
    out = {}
    base = os.path.join(root, day)
    for dp, _, fn in os.walk(base):
        for f in fn:
            p = os.path.join(dp, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            rel = os.path.relpath(p, base)
            # A node's snapshot is new each night under a new timestamp: pair it by node.
            out[re.sub(r"(etcd-snapshot-.*)-\d+$", r"\1", rel)] = p
    return out


def page_kind(rel, data):
    if "etcd-snapshot" in rel:
        return "etcd", 4096
    if data[:16] == b"SQLite format 3\x00":
        ps = int.from_bytes(data[16:18], "big")
        return ("state.db" if rel == "state.db" else "pv sqlite"), 65536 if ps == 1 else ps
    if "/base/" in rel or "/global/" in rel or "pg_wal" in rel:
        return "pv postgres", 8192
    return None, 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--level", type=int, default=3)
    a = ap.parse_args()
    plain = zstd.ZstdCompressor(level=a.level)

    def size(buf, base):
        if not base:
            return len(plain.compress(buf))
        d = zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT)
        return len(zstd.ZstdCompressor(level=a.level, dict_data=d).compress(buf))

    days = sorted(d for d in os.listdir(a.root) if d.startswith("day-"))
    seen = set()
    tot = defaultdict(lambda: [0, 0, 0])  # new raw, alone, against the previous night

    def groups(cat, new, base):
        t = tot[cat]
        for i in range(0, len(new), GROUP):
            chunk = new[i : i + GROUP]
            t[0] += len(chunk)
            alone = size(chunk, None)
            t[1] += alone
            t[2] += min(alone, size(chunk, base[i : i + GROUP]))

    prev = {}
    for n, day in enumerate(days):
        cur = files(a.root, day)
        small_new, small_base = [], []
        for rel, p in sorted(cur.items()):
            with open(p, "rb") as f:
                data = f.read()
            old = b""
            if rel in prev:
                with open(prev[rel], "rb") as f:
                    old = f.read()
            kind, ps = page_kind(rel, data)
            if kind is None:
                if len(data) > 32768:
                    continue
                h = hashlib.sha256(data).digest()
                if h not in seen:
                    seen.add(h)
                    small_new.append(data)
                    small_base.append(old[: len(data) + 4096])
                continue
            new, base = [], []
            for off in range(0, len(data), ps):
                page = data[off : off + ps]
                h = hashlib.sha256(page).digest()
                if h in seen:
                    continue
                seen.add(h)
                new.append(page)
                base.append(old[off : off + ps])
            if n > 0 and new:
                groups(kind, b"".join(new), b"".join(base))
        if n > 0 and small_new:
            groups("small files", b"".join(small_new), b"".join(small_base))
        prev = cur
    print(f"nights 2-{len(days)}, zstd level {a.level}, MB")
    print(f"{'':12} {'new raw':>9} {'alone':>8} {'vs prev':>8} {'ratio':>6}")
    sums = [0, 0, 0]
    for k, (r, al, dl) in sorted(tot.items()):
        sums = [sums[0] + r, sums[1] + al, sums[2] + dl]
        print(f"{k:12} {r / 1e6:9.2f} {al / 1e6:8.2f} {dl / 1e6:8.2f} {dl / max(al, 1):6.2f}")
    r, al, dl = sums
    print(f"{'all':12} {r / 1e6:9.2f} {al / 1e6:8.2f} {dl / 1e6:8.2f} {dl / max(al, 1):6.2f}")


if __name__ == "__main__":
    main()
