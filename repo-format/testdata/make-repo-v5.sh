#!/usr/bin/env bash
# How repo-format/testdata/repo-v5 was made. The committed repository is FROZEN: running this
# again creates a *different* repository (new random master key, salt, nonces, repo id), so only
# run it into a scratch directory, e.g. to compare, never over the committed fixture.
#
#   repo-format/testdata/make-repo-v5.sh /tmp/some-new-repo
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: $0 <new repository directory>}
work=/tmp/cairn-fixture-v5     # the snapshot records /tmp/cairn-fixture-v5/src
rm -rf "$work"
mkdir -p "$work"
# 1. The deterministic source tree (with the db/pages.sqlite of format 4) and its manifest.
CAIRN_FIXTURE_VERSION=5 CAIRN_FIXTURE_SRC="$work/src" CAIRN_FIXTURE_MANIFEST="$work/manifest.json" \
  cargo test -q -p cairn-engine --test fixture_v1 -- --ignored --exact make_fixture_source
# 2. A repository written by the real binary, cheap KDF, fixed host and time (in UTC).
cargo build -q -p cairn-cli
cairn=target/debug/cairn
export CAIRN_PASSWORD=cairn-fixture-v5 TZ=UTC
$cairn -r "$out" init --kdf-memory-mib 8 --kdf-iterations 1 --format-version 5
$cairn -r "$out" backup --host fixture --time "2024-05-01 03:00:00" "$work/src"
$cairn -r "$out" --json check --read-data | python3 -c 'import json,sys; r=json.load(sys.stdin)["report"]; assert r["content_lists"] >= 2, r; print("content lists:", r["content_lists"])'
# Format 5: the trees and content lists are sealed in tree groups.
for i in "$out"/index/*; do
  $cairn -r "$out" cat index "$(basename "$i")"
done | python3 -c 'import json,sys
d=json.JSONDecoder(); s=sys.stdin.read(); n=0; i=0
while i < len(s):
    if s[i].isspace(): i+=1; continue
    o,i=d.raw_decode(s,i)
    n+=sum(1 for p in o["packs"] for b in p["blobs"] if b["blob_type"]=="Tree" and b["group_offset"] is not None)
assert n >= 4, n; print("grouped tree blobs:", n)'
cp "$work/manifest.json" "$out/manifest.json"
# Empty directories (data/00..ff without packs, locks/) do not survive git; readers must not need them.
find "$out" -type d -empty -delete
du -sh "$out"
