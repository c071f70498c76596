#!/usr/bin/env bash
# image/build.sh: the appliance's disk image, and its kernel and initramfs
# for QEMU's direct boot (issue 12, item 1; docs/image.md).
#
#   image/build.sh [--variant prod|debug] [--out DIR] [--cache DIR] [--triad PATH]
#                  [--disk-size MIB] [--layout FILE]
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
#   disk.img         the appliance's disk, laid out as image/layout.conf says
#                    (GPT; ESP with the unified kernel image; erofs root A;
#                    empty root B; ext4 state and data), --disk-size MiB
#                    (default 1024) with the last partition taking the rest;
#                    --layout: another layout file (tests of the checks)
#   uki.efi          the unified kernel image (systemd's EFI stub + bzImage
#                    + a small initramfs that mounts root A + command line),
#                    also the ESP's EFI/BOOT/BOOTX64.EFI
#   rootfs.erofs     root A's filesystem: the same tree as initramfs.cpio
#   cmdline-disk     the UKI's kernel command line
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
disk_mib=1024
layout=$here/layout.conf
while [ $# -gt 0 ]; do
	case "$1" in
	--variant) variant=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--cache) cache=$2; shift 2 ;;
	--triad) triad=$2; shift 2 ;;
	--disk-size) disk_mib=$2; shift 2 ;;
	--layout) layout=$2; shift 2 ;;
	-h | --help) sed -n '2,34p' "$0"; exit 0 ;;
	*) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
case "$variant" in prod | debug) ;; *) echo "build.sh: --variant is prod or debug, not $variant" >&2; exit 2 ;; esac
case "$disk_mib" in '' | *[!0-9]*) echo "build.sh: --disk-size is a whole number of MiB, not '$disk_mib'" >&2; exit 2 ;; esac
out=${out:-$here/out/$variant}
triad=${triad:-$repo/target/x86_64-unknown-linux-gnu/release/triad}
die() { echo "build.sh: $*" >&2; exit 1; }
say() { echo "build.sh: $*" >&2; }

# The kernel package: the release linux-image-amd64 depends on now.
# Pinning it (TRIAD_KERNEL_PKG=linux-image-6.1.0-57-amd64) pins the image.
kpkg=${TRIAD_KERNEL_PKG:-$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)}
[ -n "$kpkg" ] || die "cannot tell which kernel package linux-image-amd64 depends on (apt-get update?)"
release=${kpkg#linux-image-}
packages=("$kpkg" libc6 kamailio kamailio-sqlite-modules e2fsprogs systemd-boot-efi)
[ "$variant" = debug ] && packages+=(busybox-static)

[ -x "$triad" ] || die "no supervisor binary at $triad: cargo build --release -p triad --bin triad"
# The disk image's tools, checked before anything is downloaded.
for tool in sfdisk mkfs.vfat mmd mcopy mkfs.erofs mkfs.ext4 objcopy objdump; do
	command -v "$tool" >/dev/null || die "$tool not found (packages fdisk, dosfstools, mtools, erofs-utils, e2fsprogs, binutils: bash .ci/setup)"
done

# --- The disk's layout (image/layout.conf), checked before anything is
# downloaded: a wrong line fails the build naming its line.
[ -f "$layout" ] || die "no layout file $layout"
guid() { # guid WORD: a fixed GUID derived from WORD (version 4 form)
	printf 'triad-disk:%s' "$1" | sha256sum | sed 's/^\(........\)\(....\).\(...\).\(...\)\(............\).*/\1-\2-4\3-8\4-\5/'
}
names=() types=() sizes=() contents=()
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
	lineno=$((lineno + 1))
	line=${line%%#*}
	read -r name type size content extra <<<"$line" || true
	[ -n "${name:-}" ] || continue
	where="$layout line $lineno"
	[ -n "${content:-}" ] && [ -z "${extra:-}" ] || die "$where: expected PARTLABEL TYPE SIZE CONTENT, found '$line'"
	[[ "$name" =~ ^[a-z0-9-]{1,36}$ ]] || die "$where: partition name '$name' (lower case, digits, '-'; at most 36)"
	for n in "${names[@]}"; do [ "$n" != "$name" ] || die "$where: partition name '$name' used twice"; done
	case "$type" in esp | root | linux) ;; *) die "$where: type '$type' is not esp, root or linux" ;; esac
	case "$size" in rest) ;; '' | *[!0-9]* | 0) die "$where: size '$size' is not a number of MiB or 'rest'" ;; esac
	[ ${#sizes[@]} -eq 0 ] || [ "${sizes[-1]}" != rest ] || die "$where: only the last partition may have size 'rest'"
	case "$content" in
	uki) [ "$type" = esp ] || die "$where: uki content needs type esp" ;;
	erofs) [ "$type" = root ] || die "$where: erofs content needs type root" ;;
	empty) ;;
	ext4:*) [[ "${content#ext4:}" =~ ^[a-z0-9-]{1,16}$ ]] || die "$where: ext4 label '${content#ext4:}' (at most 16 of a-z, 0-9, '-')" ;;
	*) die "$where: content '$content' is not uki, erofs, empty or ext4:LABEL" ;;
	esac
	names+=("$name") types+=("$type") sizes+=("$size") contents+=("$content")
done <"$layout"
[ ${#names[@]} -gt 0 ] || die "$layout lists no partition"
has() { local c; for c in "${contents[@]}"; do [ "$c" = "$1" ] && return 0; done; return 1; }
has uki || die "$layout: no esp partition with content uki (nothing would boot)"
has "ext4:triad-state" || die "$layout: no ext4:triad-state partition (the supervisor's state partition label)"
has "ext4:triad-data" || die "$layout: no ext4:triad-data partition (the supervisor's data partition label)"
rootpart=
for i in "${!names[@]}"; do [ "${contents[$i]}" = erofs ] && { rootpart=${names[$i]}; break; }; done
[ -n "$rootpart" ] || die "$layout: no root partition with content erofs"

# Offsets in MiB: the first partition at 1 MiB, the last MiB left to the
# backup GPT.
starts=()
at=1
for i in "${!names[@]}"; do
	starts+=("$at")
	if [ "${sizes[$i]}" = rest ]; then
		sizes[i]=$((disk_mib - 1 - at))
		[ "${sizes[$i]}" -ge 1 ] || die "--disk-size $disk_mib MiB leaves nothing for ${names[$i]} (the partitions before it end at $at MiB)"
	fi
	at=$((at + sizes[i]))
done
[ "$at" -le $((disk_mib - 1)) ] || die "the partitions of $layout need $((at + 1)) MiB; --disk-size is $disk_mib"

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
for d in proc sys dev run tmp var/lib/triad var/lib/triad-data etc; do mkdir -p "$root/$d"; done
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

# --- 7. The disk image (image/layout.conf) --------------------------------
# Without root or loop devices: each filesystem is made as its own file,
# then written into the disk file at its partition's offset. Every random
# or time-based value is fixed so two builds give the same bytes: GUIDs
# and UUIDs derived from the partition names, FAT's volume id and times
# (--invariant, file times from SOURCE_DATE_EPOCH), erofs -T/-U, ext4
# -U, hash_seed and E2FSPROGS_FAKE_TIME.
# The unified kernel image: systemd's EFI stub (systemd-boot-efi, only
# unpacked) with the bzImage, a small initramfs and the command line as
# PE sections (the stub's documented layout; offsets after the stub's
# last section, aligned as its SectionAlignment says).
stub=$sysroot/usr/lib/systemd/boot/efi/linuxx64.efi.stub
[ -f "$stub" ] || die "no $stub in systemd-boot-efi"
initrd=$work/initrd
mkdir -p "$initrd/sbin"
for d in proc sys dev run tmp sysroot; do mkdir -p "$initrd/$d"; done
install -m 0755 "$triad" "$initrd/sbin/init"
ln -s sbin/init "$initrd/init"
"$triad" image-modules --root >"$work/root-modules" || die "$triad image-modules --root failed"
while read -r name path _rest; do
	install -D -m 0644 "$mdir/$path" "$initrd/lib/modules/$release/$path"
done <"$work/root-modules"
[ "$(id -u)" -eq 0 ] && mknod -m 0600 "$initrd/dev/console" c 5 1
find "$initrd" -exec touch -h -d "@$epoch" {} +
(cd "$initrd" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --reproducible -R 0:0 --quiet) >"$work/initrd.cpio"
state_label=triad-state
echo "console=ttyS0 panic=5 triad.state=LABEL=$state_label triad.root=PARTLABEL=$rootpart" >"$out/cmdline-disk"
printf 'NAME=Triad\nID=triad\nPRETTY_NAME="Triad appliance (%s)"\n' "$variant" >"$work/os-release"
align=$((16#$(objdump -p "$stub" | awk '$1 == "SectionAlignment" { print $2 }')))
[ "$align" -gt 0 ] || die "cannot read the SectionAlignment of $stub"
# The end of the stub's last section (objdump -h: Idx Name Size VMA ...).
next=0
while read -r size vma; do
	next=$((16#$vma + 16#$size))
done < <(objdump -h "$stub" | awk 'NF == 7 && $1 ~ /^[0-9]+$/ { print $3, $4 }')
[ "$next" -gt 0 ] || die "cannot read the sections of $stub"
sections=()
for s in osrel:"$work/os-release" cmdline:"$out/cmdline-disk" linux:"$vmlinuz" initrd:"$work/initrd.cpio"; do
	next=$(((next + align - 1) / align * align))
	sections+=(--add-section ".${s%%:*}=${s#*:}" --change-section-vma ".${s%%:*}=$(printf '0x%x' "$next")")
	next=$((next + $(stat -Lc %s "${s#*:}")))
done
objcopy "${sections[@]}" "$stub" "$work/uki.efi" || die "objcopy could not build the unified kernel image"
# objcopy stamps the PE header with the current time (SOURCE_DATE_EPOCH
# is not honoured by binutils 2.40) and a checksum over it: set the time
# to SOURCE_DATE_EPOCH and the checksum to 0 (UEFI firmware does not check
# it; Authenticode signing leaves it out).
le32() { printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)))"; }
pe=$(od -An -tu4 -j60 -N4 "$work/uki.efi" | tr -d ' ')
[ "$(head -c $((pe + 4)) "$work/uki.efi" | tail -c 4 | od -An -c | tr -d ' ')" = 'PE\0\0' ] || die "objcopy's output has no PE header at $pe"
le32 "$epoch" | dd of="$work/uki.efi" bs=1 seek=$((pe + 8)) conv=notrunc status=none
le32 0 | dd of="$work/uki.efi" bs=1 seek=$((pe + 24 + 64)) conv=notrunc status=none
cp "$work/uki.efi" "$out/uki.efi"

# The filesystems, one file each.
disk=$work/disk.img
truncate -s "${disk_mib}M" "$disk"
{
	echo "label: gpt"
	echo "label-id: $(guid disk)"
	echo "unit: sectors"
	echo "first-lba: 2048"
	for i in "${!names[@]}"; do
		case "${types[$i]}" in
		esp) t=C12A7328-F81F-11D2-BA4B-00A0C93EC93B ;;
		root) t=4F68BCE3-E8CD-4DD1-96E7-FBCAF984B709 ;; # Linux root (x86-64)
		linux) t=0FC63DAF-8483-4772-8E79-3D69D8477DE4 ;;
		esac
		echo "start=$((starts[i] * 2048)), size=$((sizes[i] * 2048)), type=$t, uuid=$(guid "part:${names[$i]}"), name=\"${names[$i]}\""
	done
} >"$work/sfdisk"
sfdisk --no-reread --no-tell-kernel -q "$disk" <"$work/sfdisk" >/dev/null 2>"$work/sfdisk.err" ||
	die "sfdisk refused the layout: $(cat "$work/sfdisk.err")"
for i in "${!names[@]}"; do
	n=${names[$i]} fs=$work/part-$n.img
	case "${contents[$i]}" in
	uki)
		mkfs.vfat -C --invariant -i "$(guid "fat:$n" | cut -c1-8)" -n TRIAD-ESP "$fs" $((sizes[i] * 1024)) >/dev/null ||
			die "mkfs.vfat failed for $n"
		mkdir -p "$work/esp/EFI/BOOT"
		cp "$work/uki.efi" "$work/esp/EFI/BOOT/BOOTX64.EFI"
		find "$work/esp" -exec touch -h -d "@$epoch" {} +
		# -s: the tree with its directories; -m: the files' own times.
		MTOOLS_SKIP_CHECK=1 mcopy -s -m -Q -i "$fs" "$work/esp/EFI" ::/ || die "mcopy into the ESP failed"
		;;
	erofs)
		mkfs.erofs --quiet --all-root -T"$epoch" -U "$(guid "fs:$n")" "$fs" "$root" || die "mkfs.erofs failed"
		cp "$fs" "$out/rootfs.erofs"
		;;
	empty) continue ;;
	ext4:*)
		E2FSPROGS_FAKE_TIME=$epoch mkfs.ext4 -q -F -L "${contents[$i]#ext4:}" -U "$(guid "fs:$n")" \
			-E "hash_seed=$(guid "hash:$n")" "$fs" "${sizes[$i]}M" >/dev/null || die "mkfs.ext4 failed for $n"
		;;
	esac
	fs_bytes=$(stat -c %s "$fs")
	[ "$fs_bytes" -le $((sizes[i] * 1048576)) ] || die "$n: its filesystem ($fs_bytes bytes) does not fit its $((sizes[i])) MiB"
	dd if="$fs" of="$disk" bs=1M seek="${starts[$i]}" conv=notrunc,sparse status=none || die "cannot write $n into the disk"
	rm -f "$fs"
done
cp --sparse=always "$disk" "$out/disk.img"
say "wrote $out/disk.img: ${disk_mib} MiB, $(for i in "${!names[@]}"; do printf '%s %s MiB@%s, ' "${names[$i]}" "${sizes[$i]}" "${starts[$i]}"; done | sed 's/, $//'); uki.efi $(du -h "$out/uki.efi" | cut -f1)"
