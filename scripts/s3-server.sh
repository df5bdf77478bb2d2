#!/usr/bin/env bash
# Install (once, cached) and start a throw-away Garage S3 cluster on loopback for cairn's S3
# tests and benchmarks, using the team's scripts in ../shared/s3.
#
#   eval "$(scripts/s3-server.sh up   [-n 1|3] [-d DIR] [-p BASE_PORT])"
#   scripts/s3-server.sh down [-d DIR]
#
# Prints `export AWS_ENDPOINT_URL=… AWS_REGION=garage AWS_ACCESS_KEY_ID=… S3_BUCKET=…` on
# stdout (the variables cairn and its tests read). The Garage binary is cached in
# $GARAGE_ROOT (default ~/.cache/garage); a missing one is built from crates.io with
# GARAGE_PROFILE (default `debug`: 5-6 min on 2 cores; `ci` 11 min, `full` 25 min). An
# existing binary of any profile is reused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SHARED_S3=${CAIRN_SHARED_S3:-$(cd "$here/../.." && pwd)/shared/s3}
[[ -x $SHARED_S3/garage-up.sh ]] || {
  echo "s3-server: $SHARED_S3/garage-up.sh not found (set CAIRN_SHARED_S3)" >&2; exit 1; }
cmd=${1:-up}; shift || true
N=1; DIR=/tmp/cairn-garage; PORT=39100
while getopts "n:d:p:" o; do
  case $o in n) N=$OPTARG ;; d) DIR=$OPTARG ;; p) PORT=$OPTARG ;; *) exit 2 ;; esac
done
case $cmd in
  up)
    GROOT=${GARAGE_ROOT:-$HOME/.cache/garage}
    if [[ -x $GROOT/bin/garage ]] && "$GROOT/bin/garage" --version >/dev/null 2>&1; then
      GARAGE_BIN=$GROOT/bin/garage
    else
      echo "s3-server: building Garage (GARAGE_PROFILE=${GARAGE_PROFILE:-debug}) into $GROOT" >&2
      GARAGE_BIN=$(GARAGE_PROFILE=${GARAGE_PROFILE:-debug} "$SHARED_S3/garage-install.sh" "$GROOT")
    fi
    export GARAGE_BIN
    # A leftover cluster in DIR (an aborted run) is stopped first.
    [[ -d $DIR ]] && "$SHARED_S3/garage-down.sh" -d "$DIR" --purge >/dev/null 2>&1 || true
    "$SHARED_S3/garage-up.sh" -n "$N" -d "$DIR" -p "$PORT"
    ;;
  down)
    "$SHARED_S3/garage-down.sh" -d "$DIR" --purge
    ;;
  *) echo "usage: $0 up|down [-n 1|3] [-d DIR] [-p PORT]" >&2; exit 2 ;;
esac
