#!/usr/bin/env bash
# Opt-in: cairn on a 3-node Garage cluster (replication factor 3, quorum 2 of 3).
#
#   scripts/s3-failover-test.sh [--cairn-bin PATH] [--dir DIR] [--port BASE]
#
# 1. start 3 nodes; back up a source tree through node 1;
# 2. SIGKILL node 3: restore through node 1 (exact), change the source, back up again
#    through node 2, check --read-data;
# 3. restart node 3: once it is back in the quorum, check --read-data and restore the
#    newest snapshot through node 3 (exact), forget + prune, check again.
# Exits non-zero on the first failure. ~2-4 min on 2 cores (plus a first Garage build).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
CAIRN=""; DIR=/tmp/cairn-failover; PORT=39200
while [[ $# -gt 0 ]]; do
  case $1 in
    --cairn-bin) CAIRN=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
if [[ -z $CAIRN ]]; then
  cargo build --release -q -p cairn-cli --manifest-path "$root/Cargo.toml"
  CAIRN=$root/target/release/cairn
fi
work=$(mktemp -d /tmp/cairn-failover-work.XXXXXX)
trap '"$here/s3-server.sh" down -d "$DIR" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
t0=$SECONDS
log() { echo "== [$((SECONDS - t0))s] $*" >&2; }

eval "$("$here/s3-server.sh" up -n 3 -d "$DIR" -p "$PORT")"
read -r -a EP <<<"$S3_ENDPOINTS"
log "cluster up: ${EP[*]}"
export CAIRN_PASSWORD=failover-test CAIRN_CACHE_DIR=$work/cache
repo_at() { echo "s3:$1/$S3_BUCKET/failover"; }
cairn_at() { local ep=$1; shift; "$CAIRN" -q -r "$(repo_at "$ep")" "$@"; }

src=$work/src
mkdir -p "$src"
cp -a /usr/share/doc "$src/doc" 2>/dev/null || true
head -c 40000000 /dev/urandom >"$src/volume.img"
printf 'apiVersion: v1\nkind: List\n' >"$src/manifests.yaml"

cairn_at "${EP[0]}" init --kdf-memory-mib 8 --kdf-iterations 1 >/dev/null
cairn_at "${EP[0]}" backup "$src"
log "backup 1 through node 1 done"

SHARED_S3=${CAIRN_SHARED_S3:-$(cd "$root/.." && pwd)/shared/s3}
"$SHARED_S3/garage-down.sh" -d "$DIR" -N 3 -9
log "node 3 killed (SIGKILL)"

rm -rf "$work/r1"
cairn_at "${EP[0]}" restore latest --target "$work/r1"
diff -r --no-dereference "$src" "$work/r1$src"
log "restore through node 1 with node 3 down: exact"

head -c 5000000 /dev/urandom >>"$src/volume.img"
printf 'kind: ConfigMap\n' >>"$src/manifests.yaml"
cairn_at "${EP[1]}" backup "$src"
cairn_at "${EP[1]}" check --read-data
log "backup 2 and check --read-data through node 2 with node 3 down: ok"

"$DIR/node3/start.sh"
log "node 3 restarted; waiting for it to answer"
for _ in $(seq 1 120); do
  cairn_at "${EP[2]}" --no-cache snapshots >/dev/null 2>&1 && break
  sleep 1
done
cairn_at "${EP[2]}" check --read-data
rm -rf "$work/r2"
cairn_at "${EP[2]}" restore latest --target "$work/r2"
diff -r --no-dereference "$src" "$work/r2$src"
log "node 3 back: check --read-data and exact restore through node 3"

cairn_at "${EP[2]}" forget --keep-last 1 --prune
cairn_at "${EP[0]}" check --read-data
log "forget+prune and final check: ok"
echo "s3-failover-test: PASS in $((SECONDS - t0)) s"
