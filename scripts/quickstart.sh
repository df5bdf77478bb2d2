#!/usr/bin/env bash
# Build cairn and run its main job on a built-in default: a local repository in
# ./cairn-demo, a backup of the given paths (default: this source tree), a second
# (incremental) backup, the snapshot list, a check, and a restore that is compared
# with the source.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
demo="${CAIRN_DEMO_DIR:-$root/cairn-demo}"
if [ "$#" -gt 0 ]; then paths=("$@"); else paths=("$root/repo-format" "$root/engine" "$root/cli"); fi

cargo build --release -p cairn-cli --manifest-path "$root/Cargo.toml"
cairn="$root/target/release/cairn"
mkdir -p "$demo"
export CAIRN_REPOSITORY="$demo/repo"
if [ ! -f "$demo/password" ]; then
  head -c 24 /dev/urandom | base64 > "$demo/password"
  chmod 600 "$demo/password"
fi
export CAIRN_PASSWORD_FILE="$demo/password"

[ -f "$CAIRN_REPOSITORY/config" ] || "$cairn" init
"$cairn" backup --tag demo "${paths[@]}"
"$cairn" backup --tag demo "${paths[@]}"      # incremental: unchanged files are not re-read
"$cairn" snapshots
"$cairn" check
rm -rf "$demo/restore"
"$cairn" restore latest --target "$demo/restore"
for p in "${paths[@]}"; do
  abs="$(cd "$p" && pwd)"
  diff -r "$abs" "$demo/restore$abs" >/dev/null && echo "restore of $abs is identical"
done
echo "repository: $CAIRN_REPOSITORY (password in $CAIRN_PASSWORD_FILE)"
