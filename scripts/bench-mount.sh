#!/usr/bin/env bash
# Reading a big file through `cairn mount` against `cairn restore` of the same file, in one
# run: medians of alternating repetitions (the #16 target: mount ≥ 50 % of restore speed).
#   scripts/bench-mount.sh [--size-mb 1024] [--reps 3] [--cairn-bin target/release/cairn]
set -euo pipefail
size_mb=1024 reps=3 bin=target/release/cairn
while [[ $# -gt 0 ]]; do
  case $1 in
    --size-mb) size_mb=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --cairn-bin) bin=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -x $bin ]] || cargo build --release -p cairn-cli
bin=$(realpath "$bin")
work=$(mktemp -d /var/tmp/cairn-bench-mount.XXXXXX)
trap 'fusermount -u "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
export CAIRN_PASSWORD=bench CAIRN_REPOSITORY=$work/repo
"$bin" init --kdf-memory-mib 8 --kdf-iterations 1 -q >/dev/null
mkdir -p "$work/src"
# Half incompressible, half text-like: what a database or image volume holds.
head -c $((size_mb / 2))M /dev/urandom > "$work/src/big.bin"
(yes "the quick brown fox jumps over the lazy dog $RANDOM" || true) | head -c $((size_mb / 2))M >> "$work/src/big.bin"
"$bin" backup "$work/src" -q
mkdir -p "$work/mnt"
"$bin" mount "$work/mnt" 2>"$work/mount.log" &
mount_pid=$!
for _ in $(seq 100); do [[ -d $work/mnt/snapshots ]] && break; sleep 0.1; done
file="$work/mnt/snapshots/latest$work/src/big.bin"
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
restore_t=() mount_t=()
for r in $(seq "$reps"); do
  rm -rf "$work/out"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  restore_t+=("$(secs "$bin" restore "latest:$work/src/big.bin" --target "$work/out" -q)")
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  mount_t+=("$(secs cat "$file")")
  cmp -s "$file" "$work/src/big.bin" || { echo "mount content differs" >&2; exit 1; }
done
kill -INT $mount_pid; wait $mount_pid || true
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rm_=$(median "${restore_t[@]}") mm=$(median "${mount_t[@]}")
echo "file: ${size_mb} MiB; restore runs: ${restore_t[*]} s; mount reads: ${mount_t[*]} s"
echo "restore median ${rm_} s ($(echo "$size_mb / $rm_" | bc) MiB/s); mount median ${mm} s ($(echo "$size_mb / $mm" | bc) MiB/s); mount/restore speed $(echo "scale=2; $rm_ / $mm" | bc)"
