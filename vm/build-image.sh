#!/usr/bin/env bash
# Builds one of the VM lane's guests: a Debian release (bullseye, bookworm, trixie;
# debootstrap minbase, no docs) with the project's dependencies, that release's stock kernel
# (kprobes on) and its matching headers, as an ext4 image, a kernel and a small initramfs
# in OUT. Run as root; one to two minutes and about 1 GB a release.
#   vm/build-image.sh OUT RELEASE
set -euo pipefail
out=$1
release=${2:-bookworm}
mirror=http://deb.debian.org/debian
here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/.." && pwd)
work=$out.work
rm -rf "$work" && mkdir -p "$work/debs" "$work/staging" "$work/initramfs"

echo "vm: debootstrap $release (minbase)"
# No documentation, manual pages or translations in the image (written before dpkg runs).
mkdir -p "$work/rootfs/etc/dpkg/dpkg.cfg.d"
printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-exclude=/usr/share/man/*' \
  'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/info/*' \
  >"$work/rootfs/etc/dpkg/dpkg.cfg.d/01-nodoc"
# pytest: the release's own from 7 on (the plugin needs its stash); bullseye's 6.0 is
# replaced by one from PyPI below.
pytest=python3-pytest,
[ "$release" = bullseye ] && pytest=
debootstrap --variant=minbase \
  --include=python3,python3-bpfcc,${pytest}iproute2,kmod,iputils-ping,procps \
  "$release" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; exit 1; }

echo "vm: $release's stock kernel and its matching headers"
# That release's package lists, in a directory of our own (the host's apt is not touched).
apt=$work/apt
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/none"
echo "deb $mirror $release main" >"$apt/sources.list"
apt_of_release=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/none"
  -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Dir::Etc::Preferences=$apt/none-preferences"
  -o "Dir::Etc::PreferencesParts=$apt/none" -o "Dir::State::status=$apt/none-status"
  -o "Debug::NoLocking=1")
touch "$apt/none-status"
apt-get -q "${apt_of_release[@]}" update >"$work/apt.log" 2>&1 || { tail -5 "$work/apt.log"; exit 1; }
depends() { apt-cache "${apt_of_release[@]}" depends "$1"; }
version=$(depends linux-image-amd64 | sed -n 's/.*Depends: linux-image-\(.*\)/\1/p' | head -n1)
abi=${version%-amd64}
kbuild=$(depends "linux-headers-$version" | sed -n 's/.*Depends: \(linux-kbuild-[^ ]*\)$/\1/p' | head -n1)
(cd "$work/debs" && apt-get -q "${apt_of_release[@]}" download "linux-image-$version" \
  "linux-headers-$version" "linux-headers-$abi-common" "$kbuild" >>"$work/apt.log" 2>&1) \
  || { tail -5 "$work/apt.log"; exit 1; }
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/staging"; done
# Through the rootfs's own paths (/lib is a symlink into /usr where /usr is merged): dpkg -x
# straight there would replace its symlinks.
[ -d "$work/staging/lib" ] && cp -a "$work/staging/lib/." "$work/rootfs/lib/"
cp -a "$work/staging/usr/." "$work/rootfs/usr/"
cp -a "$work/staging/boot/." "$work/rootfs/boot/"
chroot "$work/rootfs" depmod "$version"

echo "vm: the project's PyPI dependency (pyroute2) from the host's venv"
site=$(find "$work/rootfs/usr/lib/python3" -maxdepth 1 -name dist-packages | head -n1)
venv_site=$("$project/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
cp -a "$venv_site/pyroute2" "$site/"
if [ -z "$pytest" ]; then
  # Debian 11's Python 3.9: tomli (no tomllib before 3.11) and a pytest the plugin runs on.
  echo "vm: tomli and pytest 8.3 for the guest's Python $(chroot "$work/rootfs" python3 -c 'import platform; print(platform.python_version())')"
  "$project/.venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile \
    --target "$site" --python-version 3.9 --only-binary=:all: --no-deps "tomli==2.0.1" \
    "pytest==8.3.5" "pluggy==1.6.0" "iniconfig==2.0.0" "packaging==26.3" "exceptiongroup==1.2.2" \
    >>"$work/apt.log" 2>&1 || { tail -5 "$work/apt.log"; exit 1; }
fi
rm -rf "$work/rootfs/var/cache/apt/"*.bin "$work/rootfs/var/lib/apt/lists/"* \
  "$work/rootfs/usr/share/"{doc,man,locale,info}/*
# PID 1 after the initramfs: runs the checkout's vm/guest-run (the suite changes with the
# checkout, the image does not).
cat >"$work/rootfs/usr/local/sbin/dataplane-guest-run" <<'RUN'
#!/bin/sh
mount -o remount,rw /
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /src && mount -t ext4 /dev/vdb /src && exec /bin/sh /src/vm/guest-run
echo "vm: cannot mount the checkout's disk"; echo o >/proc/sysrq-trigger; sleep 10
RUN
chmod 755 "$work/rootfs/usr/local/sbin/dataplane-guest-run"

echo "vm: initramfs (busybox, virtio_pci, virtio_blk, crc32c, ext4)"
ir=$work/initramfs
mkdir -p "$ir/bin" "$ir/proc" "$ir/sys" "$ir/dev" "$ir/newroot" "$ir/lib/modules/$version"
cp /bin/busybox "$ir/bin/busybox"
for tool in sh mount modprobe switch_root sleep; do ln -s busybox "$ir/bin/$tool"; done
modules="$work/rootfs/lib/modules/$version"
for mod in virtio_pci virtio_blk crc32c_generic ext4; do
  chroot "$work/rootfs" modprobe --set-version "$version" --show-depends "$mod" \
    | awk '$1 == "insmod" {print $2}' | while read -r path; do
      # Where the initramfs's busybox looks, also when kmod names them under /usr/lib.
      at=${path#/usr}
      mkdir -p "$ir$(dirname "$at")"
      # busybox loads plain ELF only: trixie's modules are xz-compressed.
      case $path in
        *.ko.xz) xz -dc "$work/rootfs$path" >"$ir${at%.xz}" ;;
        *) cp "$work/rootfs$path" "$ir$at" ;;
      esac
    done
done
for index in modules.dep modules.alias; do
  sed 's/\.ko\.xz\b/.ko/g' "$modules/$index" >"$ir/lib/modules/$version/$index"
done
cat >"$ir/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
# ext4 asks the crypto API for crc32c, which would need /sbin/modprobe: load it first.
# Some are built in (trixie's virtio): modprobe says so, harmlessly.
for mod in virtio_pci virtio_blk crc32c_generic ext4; do modprobe $mod 2>/dev/null; done
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
