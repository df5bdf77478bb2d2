#!/usr/bin/env bash
# Backup and restore throughput over sftp: on loopback, beside restic's sftp backend and
# cairn's local backend, on the same data: a first backup into a fresh repository, then a
# full restore, medians of N repetitions with the tools alternating in each.
#
#   scripts/bench-sftp.sh [--data DIR] [--reps N] [--cairn BIN] [--work DIR]
#
# Starts its own sshd (scripts/sshd-server.sh, port 39322). Default data: the bench-compare
# incompressible set (954 MB), made by `scripts/bench-compare.sh --data incompressible` once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
DATA=/var/tmp/cairn-bench/data/incompressible; REPS=3; CAIRN=""; WORK=/var/tmp/cairn-bench-sftp
while [[ $# -gt 0 ]]; do
  case $1 in
    --data) DATA=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --cairn) CAIRN=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
  esac
done
[[ -d $DATA ]] || { echo "bench-sftp: no data at $DATA" >&2; exit 1; }
if [[ -z $CAIRN ]]; then
  cargo build --release -q -p cairn-cli --manifest-path "$root/Cargo.toml"
  CAIRN=$root/target/release/cairn
fi
command -v restic >/dev/null || { echo "bench-sftp: restic is not installed" >&2; exit 1; }
sshd_dir=$WORK/sshd
rm -rf "$WORK"; mkdir -p "$WORK"
eval "$("$here/sshd-server.sh" up -d "$sshd_dir" -p 39322)"
trap '"$here/sshd-server.sh" down -d "$sshd_dir" >/dev/null 2>&1 || true' EXIT
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
remote=$CAIRN_TEST_SFTP_DIR
bytes=$(du -sb "$DATA" | cut -f1)
echo "data: $DATA, $(numfmt --to=iec "$bytes") ; $REPS repetitions; $(nproc) cores" >&2

# One timed run: prints seconds.
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>"$WORK/last.err" || { cat "$WORK/last.err" >&2; return 1; }; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }

declare -A res
run_tool() {
  local tool=$1 rep=$2 repo out
  rm -rf "$WORK/restore" "$remote"/* "$WORK/local-repo" "$WORK/cache"
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  case $tool in
    cairn-local)
      repo=$WORK/local-repo
      "$CAIRN" -q -r "$repo" init --kdf-memory-mib 8 --kdf-iterations 1 >/dev/null
      res[$tool,backup,$rep]=$(timed "$CAIRN" -q -r "$repo" backup "$DATA")
      res[$tool,restore,$rep]=$(timed "$CAIRN" -q -r "$repo" restore latest --target "$WORK/restore") ;;
    cairn-sftp)
      repo="sftp:$CAIRN_TEST_SFTP_HOST:$remote/cairn"
      XDG_CACHE_HOME=$WORK/cache "$CAIRN" -q -r "$repo" -o "sftp.command=$CAIRN_TEST_SFTP_COMMAND" init --kdf-memory-mib 8 --kdf-iterations 1 >/dev/null
      res[$tool,backup,$rep]=$(XDG_CACHE_HOME=$WORK/cache timed "$CAIRN" -q -r "$repo" -o "sftp.command=$CAIRN_TEST_SFTP_COMMAND" backup "$DATA")
      res[$tool,restore,$rep]=$(XDG_CACHE_HOME=$WORK/cache timed "$CAIRN" -q -r "$repo" -o "sftp.command=$CAIRN_TEST_SFTP_COMMAND" restore latest --target "$WORK/restore") ;;
    restic-sftp)
      repo="sftp:$CAIRN_TEST_SFTP_HOST:$remote/restic"
      RESTIC_CACHE_DIR=$WORK/cache restic -q -r "$repo" -o "sftp.command=$CAIRN_TEST_SFTP_COMMAND" init >/dev/null
      res[$tool,backup,$rep]=$(RESTIC_CACHE_DIR=$WORK/cache timed restic -q -r "$repo" -o "sftp.command=$CAIRN_TEST_SFTP_COMMAND" backup "$DATA")
      res[$tool,restore,$rep]=$(RESTIC_CACHE_DIR=$WORK/cache timed restic -q -r "$repo" -o "sftp.command=$CAIRN_TEST_SFTP_COMMAND" restore latest --target "$WORK/restore") ;;
  esac
  cmp -s <(cd "$DATA" && find . -type f -exec sha256sum {} + | sort) \
         <(cd "$WORK/restore$DATA" && find . -type f -exec sha256sum {} + | sort) \
    || { echo "bench-sftp: $tool restored something else" >&2; exit 1; }
}
tools=(cairn-sftp restic-sftp cairn-local)
for rep in $(seq 1 "$REPS"); do
  # Rotate which tool goes first.
  for i in 0 1 2; do
    t=${tools[$(( (i + rep) % 3 ))]}
    run_tool "$t" "$rep"
    echo "rep $rep $t: backup ${res[$t,backup,$rep]} s, restore ${res[$t,restore,$rep]} s" >&2
  done
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "| tool | backup s (median) | MB/s | restore s (median) | MB/s | all backup runs | all restore runs |"
echo "|---|---|---|---|---|---|---|"
for t in "${tools[@]}"; do
  b=(); r=()
  for rep in $(seq 1 "$REPS"); do b+=("${res[$t,backup,$rep]}"); r+=("${res[$t,restore,$rep]}"); done
  mb=$(median "${b[@]}"); mr=$(median "${r[@]}")
  printf '| %s | %.2f | %.0f | %.2f | %.0f | %s | %s |\n' "$t" "$mb" "$(echo "$bytes / 1000000 / $mb" | bc -l)" \
    "$mr" "$(echo "$bytes / 1000000 / $mr" | bc -l)" "${b[*]}" "${r[*]}"
done
rm -rf "$WORK/restore" "$remote"/* "$WORK/local-repo"
