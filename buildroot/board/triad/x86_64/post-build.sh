#!/usr/bin/env bash
# post-build.sh TARGET_DIR: Buildroot runs this on the target tree before
# it packs the root filesystem (BR2_ROOTFS_POST_BUILD_SCRIPT). It puts the
# programs where the supervisor calls them and refuses a production tree
# that carries a shell or an interpreter, as image/build.sh does.
set -euo pipefail

target=${1:?usage: post-build.sh TARGET_DIR}
die() { echo "post-build.sh: $*" >&2; exit 1; }

# The supervisor runs /sbin/e2fsck and mkfs.ext4 (appliance.rs); e2fsprogs
# installs under /usr/sbin when the tree has a merged /usr.
for prog in e2fsck mke2fs; do
	if [ ! -e "$target/sbin/$prog" ]; then
		[ -e "$target/usr/sbin/$prog" ] || die "$prog is not in the target (BR2_PACKAGE_E2FSPROGS?)"
		ln -sf "../usr/sbin/$prog" "$target/sbin/$prog"
	fi
done
ln -sf mke2fs "$target/sbin/mkfs.ext4"

# Only libsqlite3 is needed (Kamailio's db_sqlite); the sqlite package also
# installs its command-line shell, which image/ does not ship.
rm -f "$target/usr/bin/sqlite3"

# Mount points on the read-only root (the supervisor mounts the state
# partition on /var/lib/triad; /run and /tmp are its tmpfs mounts).
for d in proc sys dev run tmp var/lib/triad; do
	mkdir -p "$target/$d"
done

# The production image carries no shell or interpreter (DESIGN.md part 6).
for s in sh bash dash ash busybox perl python3 lua; do
	found=$(find "$target" -name "$s" \( -type f -o -type l \) -print -quit)
	[ -z "$found" ] || die "the production tree contains ${found#"$target"}"
done
[ -x "$target/sbin/init" ] || die "no /sbin/init: BR2_PACKAGE_TRIAD is not set"
