#!/usr/bin/env bash
# Peak RSS of the full nightly job (cluster state + every node's agent dir + the PV trees +
# the manifests) on the K3s dataset, night after night into one repository: what the
# chart's 256 MiB memory limit (deploy/cairn/values.yaml) must hold.
#
#   scripts/k3s-job-memory.sh [--data /var/tmp/k3s/m7s1] [--cairn BIN] [--limit-mib 256]
#
# Data: python3 ../shared/datasets/k3s-sim.py /var/tmp/k3s/m7s1 --days 7 --seed 1 --scale medium
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
DATA=/var/tmp/k3s/m7s1; CAIRN=""; LIMIT=256
while [[ $# -gt 0 ]]; do
  case $1 in
    --data) DATA=$2; shift 2 ;;
    --cairn) CAIRN=$2; shift 2 ;;
    --limit-mib) LIMIT=$2; shift 2 ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
  esac
done
if [[ -z $CAIRN ]]; then
  cargo build --release -q -p cairn-cli --manifest-path "$root/Cargo.toml"
  CAIRN=$root/target/release/cairn
fi
[[ -x /usr/bin/time ]] || apt-get install -y -qq time >/dev/null
work=$(mktemp -d /var/tmp/cairn-k3s-mem.XXXXXX); trap 'rm -rf "$work"' EXIT
printf 'bench\n' > "$work/pw"
cur=$work/cur   # a stable path to tonight's data, so that each night has its parent
server_dir=$(ls -d "$DATA"/day-01/nodes/*/server | head -1)
server=$(basename "$(dirname "$server_dir")")
{
  printf '[repository]\npath = "%s"\npassword-file = "%s"\n\n' "$work/repo" "$work/pw"
  printf '[defaults]\nkeep-daily = 7\nkeep-weekly = 4\n\n'
  printf '[[source]]\nname = "etcd"\nkind = "k3s-etcd"\nsnapshot-dir = "%s/etcd"\ntoken-file = "%s/nodes/%s/server/token"\n\n' "$cur" "$cur" "$server"
  printf '[[source]]\nname = "sqlite"\nkind = "k3s-sqlite"\ndatabase = "%s/state.db"\ntoken-file = "%s/nodes/%s/server/token"\n\n' "$cur" "$cur" "$server"
  printf '[[source]]\nname = "manifests"\nkind = "path"\npaths = ["%s/manifests"]\n\n' "$cur"
  printf '[[source]]\nname = "nodes"\nkind = "path"\npaths = ["%s/nodes"]\n\n' "$cur"
  printf '[[source]]\nname = "volumes"\nkind = "path"\npaths = ["%s/pv"]\n' "$cur"
} > "$work/job.toml"
"$CAIRN" -q -r "$work/repo" --password-file "$work/pw" init >/dev/null
max=0
echo "| night | data | wall s | peak RSS MiB |"
echo "|---|---|---|---|"
for d in "$DATA"/day-*; do
  ln -sfn "$d" "$cur"
  out=$( { /usr/bin/time -f '%M %e' "$CAIRN" run --config "$work/job.toml" --quiet >/dev/null; } 2>&1 | tail -1)
  read -r kb secs <<<"$out"
  mib=$(( kb / 1024 ))
  (( mib > max )) && max=$mib
  echo "| $(basename "$d") | $(du -shL "$d" | cut -f1) | $secs | $mib |"
done
echo "peak RSS over all nights: $max MiB (limit $LIMIT MiB)"
(( max < LIMIT )) || { echo "k3s-job-memory: over the limit" >&2; exit 1; }
