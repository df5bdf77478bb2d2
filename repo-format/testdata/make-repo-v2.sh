#!/usr/bin/env bash
# How repo-format/testdata/repo-v2 was made. The committed repository is FROZEN: running this
# again creates a *different* repository (new random master key, salt, nonces, repo id), so only
# run it into a scratch directory, e.g. to compare, never over the committed fixture.
#
#   repo-format/testdata/make-repo-v2.sh /tmp/some-new-repo
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: $0 <new repository directory>}
work=/tmp/cairn-fixture-v2     # the snapshot records /tmp/cairn-fixture-v2/src
rm -rf "$work"
mkdir -p "$work"
# 1. The deterministic source tree and its manifest (engine/tests/fixture_v1.rs).
CAIRN_FIXTURE_VERSION=2 CAIRN_FIXTURE_SRC="$work/src" CAIRN_FIXTURE_MANIFEST="$work/manifest.json" \
  cargo test -q -p cairn-engine --test fixture_v1 -- --ignored --exact make_fixture_source
# 2. A repository written by the real binary, cheap KDF, fixed host and time (in UTC).
cargo build -q -p cairn-cli
export CAIRN_PASSWORD=cairn-fixture-v2 TZ=UTC
target/debug/cairn -r "$out" init --kdf-memory-mib 8 --kdf-iterations 1 --format-version 2
target/debug/cairn -r "$out" backup --host fixture --time "2024-05-01 03:00:00" "$work/src"
cp "$work/manifest.json" "$out/manifest.json"
# Empty directories (data/00..ff without packs, locks/) do not survive git; readers must not need them.
find "$out" -type d -empty -delete
du -sh "$out"
