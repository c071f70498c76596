#!/usr/bin/env bash
# image/build.sh: the appliance's kernel and initramfs for QEMU (issue 12,
# item 1; docs/image.md).
#
#   image/build.sh [--variant prod|debug] [--out DIR] [--cache DIR] [--triad PATH]
#
# Offline except the Debian package mirror: every input is a Debian package
# fetched with `apt-get download` into the cache and unpacked with
# `dpkg -x` (nothing is installed on this machine), plus the static
# supervisor built from this tree and the Kamailio payload in
# firmware/lab/payload/kamailio. Writes to OUT (default image/out/VARIANT):
#
#   vmlinux          Debian's kernel, the uncompressed ELF (PVH entry: QEMU
#                    boots it with -kernel about 3 s sooner than the bzImage)
#   initramfs.cpio   the whole root filesystem, uncompressed newc cpio
#   cmdline          the kernel command line the image expects
#   manifest.txt     every file of the initramfs with its size and sha256
#
# Fails, naming it, when a kernel module of the supervisor's table is not in
# the kernel package, when the table does not load a module's dependency
# first, or when a program or library is not found in the unpacked packages.
# Reproducible: file times are SOURCE_DATE_EPOCH (the last commit's time),
# the cpio is written in sorted order with owner 0:0 (docs/image.md).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
variant=prod
out=
cache=/var/cache/triad-image
triad=
while [ $# -gt 0 ]; do
	case "$1" in
	--variant) variant=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--cache) cache=$2; shift 2 ;;
	--triad) triad=$2; shift 2 ;;
	-h | --help) sed -n '2,23p' "$0"; exit 0 ;;
	*) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
case "$variant" in prod | debug) ;; *) echo "build.sh: --variant is prod or debug, not $variant" >&2; exit 2 ;; esac
out=${out:-$here/out/$variant}
triad=${triad:-$repo/target/x86_64-unknown-linux-gnu/release/triad}
die() { echo "build.sh: $*" >&2; exit 1; }
say() { echo "build.sh: $*" >&2; }

# The kernel package: the release linux-image-amd64 depends on now.
# Pinning it (TRIAD_KERNEL_PKG=linux-image-6.1.0-57-amd64) pins the image.
kpkg=${TRIAD_KERNEL_PKG:-$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)}
[ -n "$kpkg" ] || die "cannot tell which kernel package linux-image-amd64 depends on (apt-get update?)"
release=${kpkg#linux-image-}
packages=("$kpkg" libc6 kamailio kamailio-sqlite-modules e2fsprogs)
[ "$variant" = debug ] && packages+=(busybox-static)

[ -x "$triad" ] || die "no supervisor binary at $triad: cargo build --release -p triad --bin triad"
# A static glibc binary (+crt-static) has no PT_INTERP; ldd says
# "statically linked" (or "not a dynamic executable" for some builds).
ldd "$triad" 2>&1 | grep -Eq "statically linked|not a dynamic executable" || die "$triad is not statically linked"

debs=$cache/debs
mkdir -p "$debs"
# --- 1. Packages ---------------------------------------------------------
fetch() { # fetch PKG...: download what is not in the cache yet
	local want=()
	for p in "$@"; do
		compgen -G "$debs/${p}_*.deb" >/dev/null || want+=("$p")
	done
	[ ${#want[@]} -eq 0 ] && return 0
	say "downloading ${want[*]}"
	if ! (cd "$debs" && apt-get download -q "${want[@]}" 2>"$debs/.err"); then
		# Stale or missing package lists are the usual cause: refresh once.
		[ "$(id -u)" -eq 0 ] && apt-get update -qq >&2 && (cd "$debs" && apt-get download -q "${want[@]}" 2>"$debs/.err") ||
			die "apt-get download ${want[*]} failed: $(grep -v '^W: Download is performed unsandboxed' "$debs/.err")"
	fi
}
fetch "${packages[@]}"

work=$(mktemp -d /tmp/triad-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
sysroot=$work/sysroot
root=$work/root
mkdir -p "$sysroot" "$root"
unpack() { # unpack PKG...: into the sysroot, from the cache
	for p in "$@"; do
		local deb
		deb=$(ls "$debs/${p}"_*.deb 2>/dev/null | sort -V | tail -1)
		[ -n "$deb" ] || die "package $p is not in $debs"
		dpkg -x "$deb" "$sysroot"
	done
}
unpack "${packages[@]}"

# --- 2. Kernel: the ELF inside the bzImage (scripts/extract-vmlinux) --------
mkdir -p "$out"
vmlinuz=$sysroot/boot/vmlinuz-$release
[ -f "$vmlinuz" ] || die "no $vmlinuz in $kpkg"
found=
for off in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1); do
	if tail -c +"$((off + 1))" "$vmlinuz" | xz -dc 2>/dev/null >"$work/vmlinux"; then :; fi
	if [ -s "$work/vmlinux" ] && head -c 4 "$work/vmlinux" | grep -q "ELF"; then
		found=1
		break
	fi
done
[ -n "$found" ] || die "no XZ-compressed ELF kernel found in $vmlinuz"
cp "$work/vmlinux" "$out/vmlinux"
grep -q '^CONFIG_PVH=y' "$sysroot/boot/config-$release" || die "$kpkg lacks CONFIG_PVH: QEMU cannot boot its vmlinux"
for opt in CONFIG_DEVTMPFS CONFIG_BLK_DEV_INITRD CONFIG_PACKET CONFIG_CGROUPS CONFIG_NF_TABLES_NETDEV CONFIG_SERIAL_8250_CONSOLE; do
	grep -q "^$opt=y" "$sysroot/boot/config-$release" || die "$kpkg: $opt is not built in"
done

# --- 3. Kernel modules: the supervisor's table, checked ------------------
mdir=$sysroot/lib/modules/$release
"$triad" image-modules >"$work/modules" || die "$triad image-modules failed (table out of order?)"
modinfo_field() { # modinfo_field FILE FIELD: one .modinfo field
	tr '\0' '\n' <"$1" | sed -n "s/^$2=//p" | head -1
}
norm() { tr '-' '_'; }
loaded=" "
while read -r name path deps _use; do
	[ -f "$mdir/$path" ] || die "kernel module $name ($path) is not in $kpkg"
	real=$(modinfo_field "$mdir/$path" name | norm)
	[ "$real" = "$name" ] || die "kernel module $path is named $real, the table says $name"
	for d in $(modinfo_field "$mdir/$path" depends | tr ',' ' ' | norm); do
		case "$loaded" in *" $d "*) ;; *) die "kernel module $name depends on $d, which the table does not load before it" ;; esac
	done
	loaded="$loaded$name "
	install -D -m 0644 "$mdir/$path" "$root/lib/modules/$release/$path"
done <"$work/modules"
say "$(wc -l <"$work/modules") kernel modules, dependencies checked"

# --- 4. Programs and exactly the libraries they need ----------------------
# The payload's Kamailio modules: those its config loads.
payload=$repo/firmware/lab/payload/kamailio
kmods=$(sed -n 's/^loadmodule "\([a-z0-9_]*\.so\)".*/\1/p' "$payload/kamailio.cfg" | sort -u)
[ -n "$kmods" ] || die "no loadmodule lines in $payload/kamailio.cfg"
kmoddir=usr/lib/x86_64-linux-gnu/kamailio/modules
elfs=(usr/sbin/kamailio sbin/mke2fs sbin/e2fsck)
for k in $kmods; do elfs+=("$kmoddir/$k"); done
loader=$sysroot/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
[ -x "$loader" ] || die "no dynamic loader in libc6"
# Search every directory of the sysroot holding libraries (covers the
# RUNPATH of Kamailio's modules, /usr/lib/x86_64-linux-gnu/kamailio).
libpath=$(find "$sysroot" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)
# Resolve with the sysroot's own loader. A library it finds outside the
# sysroot (on this machine) belongs to a package not unpacked yet: fetch
# that package (named by dpkg -S here) and try again.
for round in 1 2 3 4 5; do
	: >"$work/libs"
	outside=()
	for e in "${elfs[@]}"; do
		[ -f "$sysroot/$e" ] || die "$e is not in the unpacked packages"
		"$loader" --inhibit-cache --library-path "$libpath" --list "$sysroot/$e" >"$work/ldd" 2>&1 ||
			die "cannot resolve the libraries of $e: $(cat "$work/ldd")"
		grep -q "not found" "$work/ldd" && die "$e: $(grep 'not found' "$work/ldd" | head -1)"
		sed -n 's/.*=> \(\/[^ ]*\) (0x.*/\1/p' "$work/ldd" >>"$work/libs"
	done
	while read -r lib; do
		case "$lib" in "$sysroot"/*) ;; *) outside+=("$lib") ;; esac
	done < <(sort -u "$work/libs")
	[ ${#outside[@]} -eq 0 ] && break
	pkgs=()
	for lib in "${outside[@]}"; do
		p=$(dpkg -S "*/$(basename "$lib")" 2>/dev/null | grep ':amd64: ' | head -1 | cut -d: -f1)
		[ -n "$p" ] || die "library $lib is needed, and no package of this machine ships it to name"
		pkgs+=("$p")
	done
	mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
	say "libraries from ${pkgs[*]}"
	fetch "${pkgs[@]}"
	unpack "${pkgs[@]}"
	libpath=$(find "$sysroot" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)
	[ "$round" -lt 5 ] || die "library resolution did not settle"
done
for e in "${elfs[@]}"; do install -D "$sysroot/$e" "$root/$e"; done
ln -s mke2fs "$root/sbin/mkfs.ext4"
# Libraries at the path the loader found them (their sonames), symlinks
# resolved; the loader where the programs' PT_INTERP names it.
while read -r lib; do
	install -D -m 0755 "$(readlink -f "$lib")" "$root/${lib#"$sysroot"/}"
done < <(sort -u "$work/libs")
install -D -m 0755 "$(readlink -f "$loader")" "$root/lib64/ld-linux-x86-64.so.2"
install -D -m 0644 "$sysroot/etc/mke2fs.conf" "$root/etc/mke2fs.conf"

# --- 5. The supervisor, the payload, the skeleton -------------------------
install -D -m 0755 "$triad" "$root/sbin/init"
ln -s sbin/init "$root/init"
ln -s init "$root/sbin/triad"
install -D -m 0644 "$payload/kamailio.cfg" "$root/usr/share/triad/kamailio/kamailio.cfg"
install -D -m 0644 "$payload/schema.sql" "$root/usr/share/triad/kamailio/schema.sql"
if command -v sqlite3 >/dev/null; then
	# The PBX's initial location table ([filesystem] seed), WAL mode.
	mkdir -p "$root/usr/share/triad/kamailio/seed"
	sqlite3 -bail "$work/kamailio.db" <"$payload/schema.sql" >/dev/null
	install -m 0644 "$work/kamailio.db" "$root/usr/share/triad/kamailio/seed/kamailio.db"
else
	say "no sqlite3 here: the image carries the schema but no seed database"
fi
for d in proc sys dev run tmp var/lib/triad etc; do mkdir -p "$root/$d"; done
printf 'root:x:0:0:root:/root:/nonexistent\nkamailio:x:900:900:Kamailio:/nonexistent:/nonexistent\n' >"$root/etc/passwd"
printf 'root:x:0:\nkamailio:x:900:\n' >"$root/etc/group"
# The kernel opens /dev/console for init before devtmpfs is mounted.
if [ "$(id -u)" -eq 0 ]; then
	mknod -m 0600 "$root/dev/console" c 5 1
else
	say "not root: no /dev/console node (init reopens the console once devtmpfs is mounted)"
fi
if [ "$variant" = debug ]; then
	install -D -m 0755 "$sysroot/bin/busybox" "$root/bin/busybox"
	for a in sh ls cat ps mount umount dmesg ip ping free top df du less grep vi kill; do ln -s busybox "$root/bin/$a"; done
else
	# The production image carries no shell or interpreter.
	for s in sh bash dash busybox perl python3; do
		[ -z "$(find "$root" -name "$s")" ] || die "prod image contains $s"
	done
fi

# --- 6. The cpio, reproducibly --------------------------------------------
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}
find "$root" -exec touch -h -d "@$epoch" {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --reproducible -R 0:0 --quiet) >"$out/initramfs.cpio"
(cd "$root" && find . -mindepth 1 -type f | LC_ALL=C sort | xargs sha256sum | while read -r sum f; do
	echo "$(stat -c %s "$f") $sum ${f#./}"
done) >"$out/manifest.txt"
echo "console=ttyS0 panic=5 triad.state=LABEL=triad-state" >"$out/cmdline"
say "wrote $out: vmlinux $(du -h "$out/vmlinux" | cut -f1), initramfs.cpio $(du -h "$out/initramfs.cpio" | cut -f1) ($variant, kernel $release)"
