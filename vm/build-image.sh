#!/usr/bin/env bash
# Builds the VM lane's guest: Debian bookworm (debootstrap minbase) with the project's
# dependencies, Debian's stock kernel (kprobes on) and its matching headers, as an ext4
# image, a kernel and a small initramfs in OUT. Run as root; about a minute, 1 GB.
#   vm/build-image.sh OUT
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/.." && pwd)
work=$out.work
rm -rf "$work" && mkdir -p "$work/debs" "$work/staging" "$work/initramfs"

echo "vm: debootstrap bookworm (minbase)"
debootstrap --variant=minbase \
  --include=python3,python3-bpfcc,python3-pytest,iproute2,kmod,iputils-ping,procps \
  bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; exit 1; }

echo "vm: Debian's stock kernel and its matching headers"
version=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: linux-image-\(.*\)/\1/p' | head -n1)
abi=${version%-amd64}
kbuild=$(apt-cache depends "linux-headers-$version" | sed -n 's/.*Depends: \(linux-kbuild-[0-9.]*\)$/\1/p' | head -n1)
(cd "$work/debs" && apt-get download -q "linux-image-$version" "linux-headers-$version" \
  "linux-headers-$abi-common" "$kbuild" >/dev/null 2>&1)
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/staging"; done
# Into the merged /usr of the rootfs: dpkg -x straight there would replace its symlinks.
[ -d "$work/staging/lib" ] && cp -a "$work/staging/lib/." "$work/rootfs/usr/lib/"
cp -a "$work/staging/usr/." "$work/rootfs/usr/"
cp -a "$work/staging/boot/." "$work/rootfs/boot/"
chroot "$work/rootfs" depmod "$version"

echo "vm: the project's PyPI dependency (pyroute2) from the host's venv"
site=$(find "$work/rootfs/usr/lib/python3" -maxdepth 1 -name dist-packages | head -n1)
venv_site=$("$project/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
cp -a "$venv_site/pyroute2" "$site/"
install -m 755 "$here/guest-run" "$work/rootfs/usr/local/sbin/dataplane-guest-run"

echo "vm: initramfs (busybox, virtio_pci, virtio_blk, crc32c, ext4)"
ir=$work/initramfs
mkdir -p "$ir/bin" "$ir/proc" "$ir/sys" "$ir/dev" "$ir/newroot" "$ir/lib/modules/$version"
cp /bin/busybox "$ir/bin/busybox"
for tool in sh mount modprobe switch_root sleep; do ln -s busybox "$ir/bin/$tool"; done
modules="$work/rootfs/usr/lib/modules/$version"
for mod in virtio_pci virtio_blk crc32c_generic ext4; do
  chroot "$work/rootfs" modprobe --set-version "$version" --show-depends "$mod" \
    | awk '$1 == "insmod" {print $2}' | while read -r path; do
      mkdir -p "$ir$(dirname "$path")" && cp "$work/rootfs$path" "$ir$path"
    done
done
cp "$modules"/modules.dep "$modules"/modules.alias "$ir/lib/modules/$version/" 2>/dev/null || true
cat >"$ir/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
# ext4 asks the crypto API for crc32c, which would need /sbin/modprobe: load it first.
for mod in virtio_pci virtio_blk crc32c_generic ext4; do modprobe $mod; done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.2; done
if ! mount -t ext4 /dev/vda /newroot; then
  echo "vm: cannot mount the root disk"; echo o >/proc/sysrq-trigger; sleep 10
fi
exec switch_root /newroot /usr/local/sbin/dataplane-guest-run
INIT
chmod 755 "$ir/init"
(cd "$ir" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$work/initrd.gz"

echo "vm: ext4 image"
mke2fs -q -t ext4 -d "$work/rootfs" "$work/rootfs.ext4" 3G
mkdir -p "$out.new"
mv "$work/rootfs.ext4" "$out.new/rootfs.ext4"
mv "$work/initrd.gz" "$out.new/initrd.gz"
cp "$work/rootfs/boot/vmlinuz-$version" "$out.new/vmlinuz"
echo "$version" >"$out.new/kernel-version"
rm -rf "$out" && mv "$out.new" "$out" && rm -rf "$work"
echo "vm: guest image ready in $out (kernel $version)"
