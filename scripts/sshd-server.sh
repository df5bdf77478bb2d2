#!/usr/bin/env bash
# Start (or stop) a throw-away OpenSSH server on loopback for cairn's sftp: tests and
# benchmarks: a fresh host key and user key, key login only, for the user running it.
#
#   eval "$(scripts/sshd-server.sh up [-d DIR] [-p PORT])"
#   scripts/sshd-server.sh down [-d DIR]
#
# Needs openssh-server (`apt-get install openssh-server`; .ci/run installs it). Prints
# `export CAIRN_TEST_SFTP_HOST=user@127.0.0.1 CAIRN_TEST_SFTP_COMMAND="ssh … -s sftp"
# CAIRN_TEST_SFTP_DIR=DIR/remote` on stdout: the tests use `sftp:$CAIRN_TEST_SFTP_HOST:DIR/…`
# with `-o sftp.command="$CAIRN_TEST_SFTP_COMMAND"`.
set -euo pipefail
cmd=${1:-up}; shift || true
DIR=/tmp/cairn-sshd; PORT=39222
while getopts "d:p:" o; do
  case $o in d) DIR=$OPTARG ;; p) PORT=$OPTARG ;; *) exit 2 ;; esac
done
case $cmd in
  up)
    SSHD=$(command -v sshd || echo /usr/sbin/sshd)
    [[ -x $SSHD ]] || { echo "sshd-server: sshd not found (apt-get install openssh-server)" >&2; exit 1; }
    [[ -f $DIR/sshd.pid ]] && kill "$(cat "$DIR/sshd.pid")" 2>/dev/null || true
    rm -rf "$DIR"; mkdir -p "$DIR/remote"; chmod 700 "$DIR"
    ssh-keygen -q -t ed25519 -N '' -f "$DIR/host_key" -C cairn-test-host
    ssh-keygen -q -t ed25519 -N '' -f "$DIR/user_key" -C cairn-test-user
    cp "$DIR/user_key.pub" "$DIR/authorized_keys"
    mkdir -p /run/sshd 2>/dev/null || true
    cat >"$DIR/sshd_config" <<CONF
Port $PORT
ListenAddress 127.0.0.1
HostKey $DIR/host_key
AuthorizedKeysFile $DIR/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile $DIR/sshd.pid
Subsystem sftp internal-sftp
MaxSessions 64
MaxStartups 64:30:128
CONF
    "$SSHD" -f "$DIR/sshd_config" -E "$DIR/sshd.log"
    user=$(id -un)
    ssh_cmd="ssh -F none -p $PORT -i $DIR/user_key -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile=$DIR/known_hosts -o StrictHostKeyChecking=accept-new $user@127.0.0.1 -s sftp"
    # Wait until it answers.
    for _ in $(seq 1 50); do
      if echo "pwd" | sftp -q -F none -P "$PORT" -i "$DIR/user_key" -o IdentitiesOnly=yes -o BatchMode=yes \
          -o UserKnownHostsFile="$DIR/known_hosts" -o StrictHostKeyChecking=accept-new -b - "$user@127.0.0.1" >/dev/null 2>&1; then
        echo "export CAIRN_TEST_SFTP_HOST=$user@127.0.0.1"
        echo "export CAIRN_TEST_SFTP_COMMAND=\"$ssh_cmd\""
        echo "export CAIRN_TEST_SFTP_DIR=$DIR/remote"
        exit 0
      fi
      sleep 0.2
    done
    echo "sshd-server: sshd on port $PORT did not answer; its log:" >&2
    cat "$DIR/sshd.log" >&2 || true
    exit 1
    ;;
  down)
    [[ -f $DIR/sshd.pid ]] && kill "$(cat "$DIR/sshd.pid")" 2>/dev/null || true
    rm -rf "$DIR"
    ;;
  *) echo "usage: $0 up|down [-d DIR] [-p PORT]" >&2; exit 2 ;;
esac
