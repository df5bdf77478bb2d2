#!/usr/bin/env bash
# Prune benchmark: a repository with >= 100k blobs, cairn beside restic on the same content.
#
#   scripts/prune-bench.sh [--files N] [--work DIR] [--cairn PATH]
#
# Makes N small files (default 120000, 1-6 KiB of random bytes each: one blob per file in
# both tools), backs them up, deletes every second file, backs up again, forgets the first
# snapshot, and times `prune` of each tool (restic: `prune --max-unused 5%`, cairn:
# `prune --max-unused 5%`), one after the other on the same machine. Prints wall time, peak RSS
# (GNU time) and the ratio cairn/restic, and cairn's prune with --trust-index on a copy (the
# cost of reading the headers of the packs that go). Runs in ~5-10 minutes on 2 cores.
set -euo pipefail
files=120000
work=/var/tmp/cairn-prune-bench
root="$(cd "$(dirname "$0")/.." && pwd)"
cairn="$root/target/release/cairn"
while [ $# -gt 0 ]; do
  case "$1" in
    --files) files=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --cairn) cairn=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$cairn" ] || cargo build --release -p cairn-cli --manifest-path "$root/Cargo.toml"
command -v restic >/dev/null || { echo "restic is not installed (apt-get install restic)" >&2; exit 1; }
[ -x /usr/bin/time ] || apt-get install -y -qq time >/dev/null
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench RESTIC_CACHE_DIR="$work/restic-cache"
rm -rf "$work"; mkdir -p "$work/src"
echo "creating $files files..."
python3 - "$work/src" "$files" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
r = random.Random(1)
for i in range(n):
    d = os.path.join(root, "%03d" % (i % 500))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(r.randbytes(r.randint(1024, 6144)))
PY
"$cairn" -r "$work/cairn" init -q >/dev/null  # default KDF, as restic
restic -r "$work/restic" init -q
for tool in cairn restic; do
  if [ $tool = cairn ]; then "$cairn" -r "$work/cairn" backup -q --host bench "$work/src"; else restic -r "$work/restic" backup -q --host bench "$work/src"; fi
done
find "$work/src" -name 'f*[13579]' -delete
for tool in cairn restic; do
  if [ $tool = cairn ]; then "$cairn" -r "$work/cairn" backup -q --host bench "$work/src"; else restic -r "$work/restic" backup -q --host bench "$work/src"; fi
done
"$cairn" -r "$work/cairn" forget --keep-last 1 -q
restic -r "$work/restic" forget --keep-last 1 -q
blobs=$("$cairn" -r "$work/cairn" stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["blobs"])')
echo "cairn repository before prune: $blobs blobs (used and unused)"
measure() { # tool -> "seconds rss_kb"
  local out
  if [ "$1" = cairn ]; then
    out=$( { /usr/bin/time -f '%e %M' "$cairn" -r "$work/cairn" prune --max-unused 5% -q >/dev/null; } 2>&1 | tail -1)
  elif [ "$1" = cairn-trust ]; then
    out=$( { /usr/bin/time -f '%e %M' "$cairn" -r "$work/cairn-trust" prune --max-unused 5% --trust-index -q >/dev/null; } 2>&1 | tail -1)
  else
    out=$( { /usr/bin/time -f '%e %M' restic -r "$work/restic" prune --max-unused 5% -q >/dev/null; } 2>&1 | tail -1)
  fi
  echo "$out"
}
# The same repository twice: prune as it runs by default (reading the header of every pack
# that goes, see docs/serve.md) and with --trust-index (the index's word only).
cp -a "$work/cairn" "$work/cairn-trust"
read -r t_s t_rss < <(measure cairn-trust)
read -r c_s c_rss < <(measure cairn)
read -r r_s r_rss < <(measure restic)
"$cairn" -r "$work/cairn" check -q
restic -r "$work/restic" check -q >/dev/null
printf '\n| prune of %s blobs | cairn | restic | cairn/restic |\n|---|---:|---:|---:|\n' "$blobs"
python3 - "$c_s" "$r_s" "$c_rss" "$r_rss" <<'PY'
import sys
c, r, cm, rm = map(float, sys.argv[1:])
print("| wall time (s) | %.2f | %.2f | %.2f |" % (c, r, c / r))
print("| peak RSS (MB) | %.0f | %.0f | %.2f |" % (cm / 1024, rm / 1024, cm / rm))
PY
echo "cairn prune --trust-index on a copy of the same repository: $t_s s, $((t_rss / 1024)) MB peak RSS (the default reads the header of every pack that goes)"
echo "(both repositories pass check afterwards)"
