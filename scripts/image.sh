#!/usr/bin/env bash
# Build the cairn container image FROM scratch with Debian's buildah, then (with --test)
# unpack it with umoci and run `cairn version` and a backup -> restore round trip with only
# the image's root filesystem (chroot; podman is not needed).
#
#   scripts/image.sh [--binary PATH] [--tag NAME] [--output FILE] [--test] [--work DIR]
#
# Default binary: target/release/cairn (built if missing). Output: an OCI archive
# (cairn-image.tar), loadable with `podman load`, `skopeo copy oci-archive:…` or
# `k3s ctr images import`. Needs root (buildah's vfs storage, chroot).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BIN=""; TAG=localhost/cairn:0.1.0; OUT=$root/cairn-image.tar; TEST=0; WORK=/var/tmp/cairn-image
while [[ $# -gt 0 ]]; do
  case $1 in
    --binary) BIN=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --output) OUT=$2; shift 2 ;;
    --test) TEST=1; shift ;;
    --work) WORK=$2; shift 2 ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
  esac
done
if [[ -z $BIN ]]; then
  BIN=$root/target/release/cairn
  [[ -x $BIN ]] || cargo build --release -q -p cairn-cli --manifest-path "$root/Cargo.toml"
fi
need() { command -v "$1" >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq "$2" >/dev/null) || { echo "image: cannot install $2" >&2; exit 1; }; }
need buildah buildah
need umoci umoci
need skopeo skopeo
need strip binutils
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || (apt-get update -qq && apt-get install -y -qq ca-certificates >/dev/null)
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot

rm -rf "$WORK"; mkdir -p "$WORK/rootfs"
rootfs=$WORK/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
strip -o "$rootfs/usr/local/bin/cairn" "$BIN"
# The shared libraries the binary names, at the paths its loader looks in.
ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
printf 'root:x:0:0:root:/tmp:/nonexistent\ncairn:x:65532:65532:cairn:/tmp:/nonexistent\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\ncairn:x:65532:\n' > "$rootfs/etc/group"
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
cp "$root/Containerfile" "$WORK/Containerfile"
version=$("$BIN" version 2>/dev/null | head -1 | awk '{print $2}')
buildah bud -q --format oci -f "$WORK/Containerfile" -t "$TAG" \
  --label org.opencontainers.image.title=cairn \
  --label "org.opencontainers.image.description=Deduplicating, encrypted backups for K3s clusters" \
  --label "org.opencontainers.image.version=${version:-0.1.0}" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label "org.opencontainers.image.revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)" \
  --label "org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  "$WORK" >/dev/null
rm -f "$OUT"
buildah push -q "$TAG" "oci-archive:$OUT:$TAG" >/dev/null
echo "image $TAG: $(du -sh "$rootfs" | cut -f1) unpacked, $(du -h "$OUT" | cut -f1) archive ($OUT)"

if [[ $TEST == 1 ]]; then
  # Unpack the image as a runtime would, and run cairn with nothing but its root filesystem.
  skopeo copy -q "oci-archive:$OUT:$TAG" "oci:$WORK/oci:test"
  umoci unpack --image "$WORK/oci:test" "$WORK/bundle" >/dev/null
  r=$WORK/bundle/rootfs
  user=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["process"]["user"]["uid"])' "$WORK/bundle/config.json")
  [[ $user == 65532 ]] || { echo "image: runs as uid $user, not the non-root 65532" >&2; exit 1; }
  in_image() { chroot --userspec=65532:65532 "$r" /usr/local/bin/cairn "$@"; }
  in_image version
  mkdir -p "$r/tmp/src/etc" "$r/tmp/src/data"
  head -c 3000000 /dev/urandom > "$r/tmp/src/data/blob.bin"
  printf 'apiVersion: v1\nkind: ConfigMap\n' > "$r/tmp/src/etc/cm.yaml"
  ln -s ../etc/cm.yaml "$r/tmp/src/data/link"
  chown -R 65532:65532 "$r/tmp/src"
  export CAIRN_PASSWORD=image-test
  in_image -q -r /tmp/repo init --kdf-memory-mib 8 --kdf-iterations 1 >/dev/null
  in_image -q -r /tmp/repo backup /tmp/src >/dev/null
  in_image -q -r /tmp/repo restore latest --target /tmp/out >/dev/null
  in_image -q -r /tmp/repo check --read-data >/dev/null
  diff -r "$r/tmp/src" "$r/tmp/out/tmp/src" && echo "image: version, init, backup, restore (identical) and check --read-data ran inside the image"
fi
