#!/usr/bin/env bash
# How repo-format/testdata/repo-v3 was made. The committed repository is FROZEN: running this
# again creates a *different* repository (new random master key, salt, nonces, repo id), so only
# run it into a scratch directory, e.g. to compare, never over the committed fixture.
#
#   repo-format/testdata/make-repo-v3.sh /tmp/some-new-repo
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: $0 <new repository directory>}
work=/tmp/cairn-fixture-v3     # the snapshot records /tmp/cairn-fixture-v3/src
rm -rf "$work"
mkdir -p "$work"
# 1. The deterministic source tree and its manifest (engine/tests/fixture_v1.rs).
CAIRN_FIXTURE_VERSION=3 CAIRN_FIXTURE_SRC="$work/src" CAIRN_FIXTURE_MANIFEST="$work/manifest.json" \
  cargo test -q -p cairn-engine --test fixture_v1 -- --ignored --exact make_fixture_source
# 2. A repository written by the real binary, cheap KDF, fixed host and time (in UTC).
cargo build -q -p cairn-cli
cairn=target/debug/cairn
export CAIRN_PASSWORD=cairn-fixture-v3 TZ=UTC
$cairn -r "$out" init --kdf-memory-mib 8 --kdf-iterations 1 --format-version 3
$cairn -r "$out" backup --host fixture --time "2024-05-01 03:00:00" "$work/src"
# 3. A second snapshot with one more file, forgotten and pruned while another process holds
#    a shared lock (a backup reading a slow stdin): prune condemns the packs only it used
#    instead of deleting them, so the fixture has condemned index records (FORMAT.md §10).
head -c 200000 /dev/urandom >"$work/src/extra.bin"
$cairn -r "$out" backup --host fixture --time "2024-05-02 03:00:00" "$work/src"
rm "$work/src/extra.bin"
second=$($cairn -r "$out" --json snapshots | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin), key=lambda s: s["time"])[-1]["id"])')
sleep 30 | $cairn -r "$out" backup --stdin --stdin-filename hold --host holder &
holder=$!
sleep 3
$cairn -r "$out" forget "$second" --prune
kill -TERM "$(pgrep -f 'backup --stdin --stdin-filename hold' | head -1)" || true
wait "$holder" || true
$cairn -r "$out" --json check | python3 -c 'import json,sys; r=json.load(sys.stdin)["report"]; assert r["condemned_packs"] > 0, r; print("condemned packs:", r["condemned_packs"])'
cp "$work/manifest.json" "$out/manifest.json"
# Empty directories (data/00..ff without packs, locks/) do not survive git; readers must not need them.
find "$out" -type d -empty -delete
du -sh "$out"
