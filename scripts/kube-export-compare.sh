#!/usr/bin/env bash
# The manifests export with cairn's own API client beside the same export written with the
# ecosystem's client (kube + k8s-openapi, kube-probe/), against one stand-in API server
# serving a large generated cluster over TLS with client certificates, as K3s does.
# Alternating runs, medians of the wall time, CPU time and peak RSS; the binaries' sizes
# and the probe's extra crates and build time are printed too.
#
#   scripts/kube-export-compare.sh [--objects 50000] [--reps 3] [--cairn BIN]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
OBJECTS=50000; REPS=3; CAIRN=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --objects) OBJECTS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --cairn) CAIRN=$2; shift 2 ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
  esac
done
for t in openssl python3 base64 strip; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 2; }; done
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
if [[ -z $CAIRN ]]; then
  cargo build --release -q -p cairn-cli --manifest-path "$root/Cargo.toml"
  CAIRN=$root/target/release/cairn
fi
CAIRN=$(realpath "$CAIRN")
t0=$(date +%s)
cargo build --release -q --manifest-path "$root/kube-probe/Cargo.toml"
echo "kube-probe build (incremental if built before): $(( $(date +%s) - t0 )) s"
PROBE=$root/kube-probe/target/release/kube-probe

work=$(mktemp -d /var/tmp/cairn-kube-export.XXXXXX)
pid=""
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
sh "$root/cli/tests/fixtures/k3s_certs.sh" "$work"
python3 "$root/cli/tests/fixtures/kube_standin.py" "$work/port" --objects "$OBJECTS" \
  --tls server.crt server.key ca.crt &
pid=$!
for _ in $(seq 100); do [[ -s $work/port ]] && break; sleep 0.1; done
port=$(cat "$work/port")
cat > kubeconfig <<K
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: $(base64 -w0 ca.crt)
    server: https://127.0.0.1:$port
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
users:
- name: default
  user:
    client-certificate-data: $(base64 -w0 client.crt)
    client-key-data: $(base64 -w0 client.key)
K

# One run: wall seconds, CPU seconds, peak RSS KiB, and what it wrote.
run() { # name out cmd...
  local name=$1 out=$2; shift 2
  rm -rf "$out"
  /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" > "$work/stdout" 2> "$work/stderr" \
    || { echo "$name failed:"; cat "$work/stderr"; exit 1; }
  read -r wall user sys rss < "$work/time"
  local files objs bytes
  files=$(find "$out" -type f | wc -l)
  objs=$(find "$out" -type f -exec cat {} + | { grep -c '^---$' || true; })
  bytes=$(find "$out" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  echo "$name $wall $(awk "BEGIN {print $user + $sys}") $rss $files $objs $bytes" | tee -a "$work/results"
}
echo "$OBJECTS generated objects, $REPS alternating runs each"
for r in $(seq "$REPS"); do
  run cairn "$work/out-cairn" "$CAIRN" k3s export --kubeconfig kubeconfig "$work/out-cairn"
  run kube "$work/out-kube" "$PROBE" kubeconfig "$work/out-kube"
done
python3 - "$work/results" "$CAIRN" "$PROBE" <<'P'
import os, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(name, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == name)
def spread(name, col):
    v = [float(r[col]) for r in rows if r[0] == name]
    m = statistics.median(v)
    return max(abs(x - m) for x in v) / m * 100 if m else 0
print(f"{'':10} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>13} {'files':>6} {'objects':>8} {'MB written':>10}")
for n in ("cairn", "kube"):
    print(f"{n:10} {med(n,1):8.2f} {med(n,2):8.2f} {med(n,3)/1024:13.1f} {med(n,4):6.0f} {med(n,5):8.0f} {med(n,6)/1e6:10.1f}")
print(f"spread (max distance from the median): cairn wall ±{spread('cairn',1):.0f} %, kube wall ±{spread('kube',1):.0f} %")
P
strip -o "$work/cairn.stripped" "$CAIRN"
echo "stripped binaries: cairn $(( $(stat -c %s "$work/cairn.stripped") / 1024 )) KiB (every command), kube-probe $(( $(stat -c %s "$PROBE") / 1024 )) KiB (the export alone)"
crates() { grep '^name = ' "$1" | sort -u; }
extra=$(comm -13 <(crates "$root/Cargo.lock") <(crates "$root/kube-probe/Cargo.lock") | grep -v kube-probe | sed 's/name = //; s/"//g' | tr '\n' ' ')
echo "crates the kube client would add to cairn's lock file: $(wc -w <<< "$extra"): $extra"
