#!/usr/bin/env bash
# The VM lane: boots Debian's stock kernel (it has kprobes) under QEMU/TCG with the guest
# image (built once and cached; rebuilt when its inputs change), runs the VM subset of the
# tests from this checkout inside, and exits with pytest's status. The guest has no network.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/.." && pwd)
cache=${DATAPLANE_VM_CACHE:-/var/cache/dataplane/vm}
timeout_s=${DATAPLANE_VM_TIMEOUT:-1500}

fail() { echo "vm-test: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, chroot): run sudo make vm-test"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 is missing: apt-get install qemu-system-x86 (make setup-vm)"
command -v debootstrap >/dev/null || fail "debootstrap is missing: apt-get install debootstrap (make setup-vm)"
[ -x /bin/busybox ] || fail "busybox is missing: apt-get install busybox-static (make setup-vm)"
# The venv's site-packages, whatever its Python version
venv_site=$("$project/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' 2>/dev/null)
[ -n "$venv_site" ] && [ -d "$venv_site/pyroute2" ] || fail "no .venv: run make setup first"

inputs=$(cat "$here/build-image.sh" "$here/guest-run" "$project/pyproject.toml" | sha256sum | cut -c1-16)
if [ "$(cat "$cache/inputs" 2>/dev/null)" != "$inputs" ]; then
  echo "vm-test: building the guest image in $cache"
  bash "$here/build-image.sh" "$cache" || fail "building the guest image failed"
  echo "$inputs" >"$cache/inputs"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# This checkout, without its venv and git history, as the guest's second disk.
mkdir "$work/src"
tar -C "$project" --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' \
  --exclude='*.egg-info' -cf - . \
  | tar -C "$work/src" -xf -
mke2fs -q -t ext4 -d "$work/src" "$work/src.ext4" 256M

echo "vm-test: booting $(cat "$cache/kernel-version") under QEMU (TCG), at most ${timeout_s} s"
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 -accel tcg,thread=multi -cpu max \
  -smp 2 -m 3072 -nographic -no-reboot -nic none \
  -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" \
  -drive "file=$cache/rootfs.ext4,format=raw,if=virtio,snapshot=on" \
  -drive "file=$work/src.ext4,format=raw,if=virtio" \
  -append "console=ttyS0 panic=-1 quiet" </dev/null | tee "$work/console.log" \
  | sed -n '/DATAPLANE-VM-BEGIN/,/DATAPLANE-VM-EXIT/p'
rc=$(sed -n 's/.*DATAPLANE-VM-EXIT \([0-9]*\).*/\1/p' "$work/console.log" | tail -n1)
if [ -z "$rc" ]; then
  echo "vm-test: the guest did not finish (timeout or crash); its console ended with:" >&2
  tail -n 30 "$work/console.log" >&2
  exit 1
fi
echo "vm-test: pytest in the guest exited with $rc"
exit "$rc"
