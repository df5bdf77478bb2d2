#!/usr/bin/env bash
# Check the Kubernetes manifests: deploy/rendered/cairn.yaml is what the chart renders
# (deploy/render.py), every manifest validates against the Kubernetes schemas
# (kubernetes-validate from PyPI, strict: no unknown fields) for the newest release and for
# an older one K3s still ships, and the job files in the ConfigMap are valid cairn job files.
#
#   deploy/validate.sh [CAIRN_BINARY]    (default: target/debug/cairn)
#   deploy/validate.sh --tool            install kubernetes-validate if needed, print its path
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${XDG_CACHE_HOME:-$HOME/.cache}/cairn-kubernetes-validate
if [[ ! -x $venv/bin/kubernetes-validate ]]; then
  python3 -m venv "$venv" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q kubernetes-validate >&2
fi
if [[ ${1:-} == --tool ]]; then
  echo "$venv/bin/kubernetes-validate"
  exit 0
fi
cairn=${1:-$here/../target/debug/cairn}
python3 -c 'import yaml' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-yaml >/dev/null; }
python3 "$here/render.py" --check
python3 "$here/render.py" --set serviceMonitor=true > /dev/null
for k in 1.37.0 1.31.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" "$here/rendered/cairn.yaml"
done
echo "deploy: every manifest validates (strict) against Kubernetes 1.37 and 1.31"
# The job files, as cairn reads them (`schedule` parses a job file without opening the
# repository).
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 - "$here/rendered/cairn.yaml" "$tmp" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap":
        for name, text in doc["data"].items():
            open(f"{sys.argv[2]}/{name}", "w").write(text)
PY
for f in "$tmp"/*.toml; do
  "$cairn" schedule --print systemd --config "$f" > /dev/null || { echo "deploy: $(basename "$f") is not a valid job file" >&2; exit 1; }
done
echo "deploy: the job files in the ConfigMap are valid"
