#!/usr/bin/env bash
# The VM lane, a kernel matrix: for each Debian release given (default: bullseye bookworm
# trixie, i.e. Linux 5.10, 6.1 and 6.12), boots that release's stock kernel (it has kprobes)
# under QEMU/TCG with its guest image (built once per release and cached; rebuilt when its
# inputs change), runs the same suite from this checkout inside (vm/suite.py), then
# compares the kernels' verdicts and prints the matrix (vm/matrix.py). Exits 0 when every
# guest passed and the verdicts agree. The guests have no network.
#   vm/run.sh [RELEASE...]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/.." && pwd)
cache=${DATAPLANE_VM_CACHE:-/var/cache/dataplane/vm}
timeout_s=${DATAPLANE_VM_TIMEOUT:-1500}  # per guest
releases=("$@")
[ ${#releases[@]} -gt 0 ] || releases=(bullseye bookworm trixie)

fail() { echo "vm-test: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, chroot): run sudo make vm-test"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 is missing: apt-get install qemu-system-x86 (make setup-vm)"
command -v debootstrap >/dev/null || fail "debootstrap is missing: apt-get install debootstrap (make setup-vm)"
command -v debugfs >/dev/null || fail "debugfs is missing: apt-get install e2fsprogs (make setup-vm)"
[ -x /bin/busybox ] || fail "busybox is missing: apt-get install busybox-static (make setup-vm)"
# The venv's site-packages, whatever its Python version
venv_site=$("$project/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' 2>/dev/null)
[ -n "$venv_site" ] && [ -d "$venv_site/pyroute2" ] || fail "no .venv: run make setup first"
for release in "${releases[@]}"; do
  case $release in bullseye|bookworm|trixie) ;;
    *) fail "unknown release $release: KERNELS takes bullseye, bookworm and trixie" ;; esac
done
began=$SECONDS

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The one-kernel lane kept its image in $cache itself: each release has a directory now.
rm -f "$cache/rootfs.ext4" "$cache/initrd.gz" "$cache/vmlinuz" "$cache/kernel-version" "$cache/inputs"

# The images that are missing or stale, built side by side (mostly downloads and disk).
inputs=$(cat "$here/build-image.sh" "$project/pyproject.toml" | sha256sum | cut -c1-16)
building=()
for release in "${releases[@]}"; do
  if [ "$(cat "$cache/$release/inputs" 2>/dev/null)" != "$inputs" ]; then
    echo "vm-test: building the $release guest image in $cache/$release"
    mkdir -p "$cache"
    bash "$here/build-image.sh" "$cache/$release" "$release" >"$work/build-$release.log" 2>&1 &
    building+=("$release:$!")
  fi
done
for job in "${building[@]}"; do
  release=${job%%:*}
  if ! wait "${job#*:}"; then
    tail -n 20 "$work/build-$release.log" >&2
    fail "building the $release guest image failed"
  fi
  echo "$inputs" >"$cache/$release/inputs"
done
[ ${#building[@]} -eq 0 ] || echo "vm-test: images built in $((SECONDS - began)) s"

# This checkout, without its venv and git history: each guest's second disk, which also
# brings its results back.
mkdir "$work/src" "$work/results"
tar -C "$project" --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' \
  --exclude='*.egg-info' --exclude=./build -cf - . \
  | tar -C "$work/src" -xf -

# One guest: boots it, brings its results back; its console lines carry its release.
guest() {
  local release=$1 image=$cache/$1 started=$SECONDS
  mke2fs -q -t ext4 -d "$work/src" "$work/src-$release.ext4" 256M >/dev/null
  echo "vm-test: [$release] booting $(cat "$image/kernel-version") under QEMU (TCG), at most ${timeout_s} s"
  timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 -accel tcg,thread=multi -cpu max \
    -smp 2 -m 3072 -nographic -no-reboot -nic none \
    -kernel "$image/vmlinuz" -initrd "$image/initrd.gz" \
    -drive "file=$image/rootfs.ext4,format=raw,if=virtio,snapshot=on" \
    -drive "file=$work/src-$release.ext4,format=raw,if=virtio" \
    -append "console=ttyS0 panic=-1 quiet" </dev/null >"$work/console-$release.log"
  echo "$((SECONDS - started))" >"$work/results/$release.seconds"
  if ! grep -q "DATAPLANE-VM-EXIT" "$work/console-$release.log"; then
    echo "vm-test: [$release] the guest did not finish (timeout or crash); its console ended with:" >&2
    tail -n 30 "$work/console-$release.log" | sed "s/^/[$release] /" >&2
    return
  fi
  debugfs -R "dump /vm-result.json $work/results/$release.json" "$work/src-$release.ext4" \
    >/dev/null 2>&1
  rm -f "$work/src-$release.ext4"
  echo "vm-test: [$release] done in $((SECONDS - started)) s"
}

# The guests run side by side: each spends most of its time in one vCPU (bcc's compiles),
# so two cores serve more than one guest. Each console is followed, its lines prefixed.
started=$SECONDS
for release in "${releases[@]}"; do
  : >"$work/console-$release.log"
  guest "$release" &
  tail --pid=$! -n +1 -F "$work/console-$release.log" 2>/dev/null \
    | sed -un "/DATAPLANE-VM-BEGIN/,/DATAPLANE-VM-EXIT/s/^/[$release] /p" &
done
wait
echo "vm-test: guests done in $((SECONDS - started)) s"

# Kept for a look after the run: each guest's results and console.
rm -rf "$cache/last" && mkdir -p "$cache/last" && cp "$work"/results/* "$work"/console-*.log "$cache/last/" 2>/dev/null
echo "vm-test: the kernel matrix ($((SECONDS - began)) s in all; results and consoles in $cache/last)"
python3 "$here/matrix.py" "$work/results" "${releases[@]}"
rc=$?
echo "vm-test: $([ $rc = 0 ] && echo passed || echo FAILED) in $((SECONDS - began)) s"
exit $rc
