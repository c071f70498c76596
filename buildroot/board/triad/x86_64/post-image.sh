#!/usr/bin/env bash
# post-image.sh BINARIES_DIR: Buildroot runs this once the kernel and the
# root filesystem images are in BINARIES_DIR (BR2_ROOTFS_POST_IMAGE_SCRIPT).
# It makes the appliance disk, BINARIES_DIR/disk.img, with genimage from
# genimage.cfg next to this script (the layout of image/layout.conf).
set -euo pipefail

binaries=${1:?usage: post-image.sh BINARIES_DIR}
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "post-image.sh: $*" >&2; exit 1; }

for f in bzImage rootfs.erofs; do
	[ -f "$binaries/$f" ] || die "no $binaries/$f (BR2_LINUX_KERNEL_BZIMAGE, BR2_TARGET_ROOTFS_EROFS)"
done
# root-a is 256 MiB (image/layout.conf): say so plainly rather than let
# genimage fail on a root that grew past it.
size=$(stat -c %s "$binaries/rootfs.erofs")
[ "$size" -le $((256 * 1024 * 1024)) ] || die "rootfs.erofs is $size bytes, more than root-a's 256 MiB"

# Buildroot exports HOST_DIR and BUILD_DIR to this script; genimage's
# scratch root is an empty directory (every image here comes from a file).
tmp=${BUILD_DIR:-$binaries}/genimage.tmp
root=${BUILD_DIR:-$binaries}/genimage.root
rm -rf "$tmp" "$root"
mkdir -p "$root"
genimage=${HOST_DIR:+$HOST_DIR/bin/}genimage
"$genimage" \
	--config "$here/genimage.cfg" \
	--rootpath "$root" \
	--tmppath "$tmp" \
	--inputpath "$binaries" \
	--outputpath "$binaries"
rm -rf "$tmp" "$root"
echo "post-image.sh: wrote $binaries/disk.img"
