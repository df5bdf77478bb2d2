#!/usr/bin/env bash
# Backup and restore throughput over sftp and over rest (`cairn serve`, HTTPS with a private
# CA, an append-only credential): on loopback, beside restic's sftp backend and cairn's local
# backend, on the same data: a first backup into a fresh repository, then a full restore,
# medians of N repetitions with the tools alternating in each; the server's peak RSS.
#
#   scripts/bench-sftp.sh [--data DIR] [--reps N] [--cairn BIN] [--work DIR]
#
# Starts its own sshd (scripts/sshd-server.sh, port 39322) and `cairn serve` (port 39380).
# Default data: the bench-compare incompressible set (954 MB), made by
# `scripts/bench-compare.sh --data incompressible` once.
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
    *) sed -n '2,11p' "$0"; exit 2 ;;
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
# cairn serve with a private CA and one append-only credential.
pki=$WORK/pki; mkdir -p "$pki" "$WORK/serve-root"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > "$pki/ext"
openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
  -extfile "$pki/ext" -out "$pki/server.pem" 2>/dev/null
printf 'node-pw\n' > "$pki/node.pw"; printf 'admin-pw\n' > "$pki/admin.pw"
"$CAIRN" serve-credential node-1 --access append-only --new-password-file "$pki/node.pw" > "$pki/credentials"
"$CAIRN" serve-credential admin --access full --new-password-file "$pki/admin.pw" >> "$pki/credentials"
"$CAIRN" serve "$WORK/serve-root" --listen 127.0.0.1:39380 --credentials "$pki/credentials" \
  --tls-cert "$pki/server.pem" --tls-key "$pki/server.key" > "$WORK/serve.out" 2> "$WORK/serve.log" &
serve_pid=$!
for _ in $(seq 50); do grep -q listening "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
trap '"$here/sshd-server.sh" down -d "$sshd_dir" >/dev/null 2>&1 || true; kill $serve_pid 2>/dev/null || true' EXIT
rest_opts=(-o "rest.ca-file=$pki/ca.pem" -o rest.username=node-1 -o "rest.password-file=$pki/node.pw")
# The repository is created with the full credential (append-only ones create only the
# repositories their credential names); backups and restores use the node's.
admin_opts=(-o "rest.ca-file=$pki/ca.pem" -o rest.username=admin -o "rest.password-file=$pki/admin.pw")
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
remote=$CAIRN_TEST_SFTP_DIR
bytes=$(du -sb "$DATA" | cut -f1)
echo "data: $DATA, $(numfmt --to=iec "$bytes") ; $REPS repetitions; $(nproc) cores" >&2

# One timed run: prints seconds.
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>"$WORK/last.err" || { cat "$WORK/last.err" >&2; return 1; }; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }

declare -A res
run_tool() {
  local tool=$1 rep=$2 repo out
  rm -rf "$WORK/restore" "$remote"/* "$WORK/local-repo" "$WORK/cache" "$WORK/serve-root"/*
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
    cairn-rest)
      repo="rest:https://127.0.0.1:39380/bench-$rep"
      XDG_CACHE_HOME=$WORK/cache "$CAIRN" -q -r "$repo" "${admin_opts[@]}" init --kdf-memory-mib 8 --kdf-iterations 1 >/dev/null
      res[$tool,backup,$rep]=$(XDG_CACHE_HOME=$WORK/cache timed "$CAIRN" -q -r "$repo" "${rest_opts[@]}" backup "$DATA")
      res[$tool,restore,$rep]=$(XDG_CACHE_HOME=$WORK/cache timed "$CAIRN" -q -r "$repo" "${rest_opts[@]}" restore latest --target "$WORK/restore") ;;
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
tools=(cairn-sftp cairn-rest restic-sftp cairn-local)
for rep in $(seq 1 "$REPS"); do
  # Rotate which tool goes first.
  for i in 0 1 2 3; do
    t=${tools[$(( (i + rep) % 4 ))]}
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
echo "cairn serve peak RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/$serve_pid/status)"
rm -rf "$WORK/restore" "$remote"/* "$WORK/local-repo" "$WORK/serve-root"/*
