#!/usr/bin/env bash
# hwtests/setup-qemu.sh: QEMU for the hardware tests, without breaking the
# NBD client tests. Debian 12 has qemu-system-x86 only as 7.2, and
# installing it removes the qemu-utils 10.x backport (qemu-io, qemu-img,
# qemu-nbd) this machine carries. So: the emulator's libraries are
# installed normally (--no-upgrade: nothing already installed changes),
# the emulator itself, its firmware and ROMs are unpacked with dpkg -x into
# /var/cache/triad-image/qemu, where hwtests/src/qemu.rs finds them.
# OVMF (UEFI) is unpacked likewise into /var/cache/triad-image/ovmf.
# Idempotent; needs root and the Debian mirror.
set -euo pipefail
dest=${1:-/var/cache/triad-image/qemu}
# OVMF (UEFI firmware, for booting the disk image: tests/disk_boot.rs),
# unpacked the same way beside QEMU: the package is only data, and
# installing it would pull qemu-system-x86's dependencies in.
ovmf=$(dirname "$dest")/ovmf
if [ ! -f "$ovmf/usr/share/OVMF/OVMF_CODE_4M.fd" ]; then
	odebs=$(mktemp -d)
	(cd "$odebs" && apt-get download -q ovmf 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
	compgen -G "$odebs/ovmf_*.deb" >/dev/null || { echo "setup-qemu.sh: apt-get download ovmf failed (apt-get update?)" >&2; exit 1; }
	rm -rf "$ovmf.tmp"
	dpkg -x "$odebs"/ovmf_*.deb "$ovmf.tmp"
	rm -rf "$odebs" "$ovmf"
	mv "$ovmf.tmp" "$ovmf"
fi
[ -x "$dest/usr/bin/qemu-system-x86_64" ] && exit 0
libs=(libaio1 libasound2 libbpf1 libbrlapi0.8 libcacard0 libcap-ng0 libcapstone4 libepoxy0 libfdt1 libfuse3-3
	libgbm1 libglib2.0-0 libgmp10 libgnutls30 libibverbs1 libjpeg62-turbo libnuma1 libpixman-1-0 libpmem1
	libpng16-16 librdmacm1 libsasl2-2 libseccomp2 libslirp0 libsndio7.0 libspice-server1 liburing2
	libusb-1.0-0 libusbredirparser1 libvdeplug2 libzstd1)
export DEBIAN_FRONTEND=noninteractive
missing=()
for p in "${libs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A fresh machine may have no package lists yet: apt-get download needs them.
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
	apt-get install -y -qq --no-upgrade --no-install-recommends "${missing[@]}"
fi
debs=$(mktemp -d)
trap 'rm -rf "$debs"' EXIT
(cd "$debs" && apt-get download -q qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu 2>&1 |
	grep -v '^W: Download is performed unsandboxed' || true)
mkdir -p "$dest.tmp"
for d in "$debs"/*.deb; do dpkg -x "$d" "$dest.tmp"; done
rm -rf "$dest"
mv "$dest.tmp" "$dest"
# The emulator must start (its libraries all present) ...
QEMU_MODULE_DIR=$dest/usr/lib/x86_64-linux-gnu/qemu "$dest/usr/bin/qemu-system-x86_64" --version | head -1
# ... and the NBD client tools must still be the ones the tests use.
if command -v qemu-io >/dev/null; then qemu-io --version | head -1; fi
