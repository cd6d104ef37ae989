#!/usr/bin/env bash
# Set up the e2e tier: a real libvirtd with QEMU on this machine, and a tiny guest to boot.
# As root (CI): install what is missing, make /dev/kvm usable by QEMU, start virtlogd and libvirtd
# when no daemon answers on qemu:///system, and build the guest. Without root it changes nothing:
# the e2e tests then skip with one clear reason when no daemon answers.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils busybox-static cpio"

if [ "$(id -u)" -ne 0 ]; then
  echo "e2e set-up: not root, nothing installed or started (tests skip if no libvirtd answers)"
  exit 0
fi
# shellcheck disable=SC2086
scripts/ensure-system-packages.sh $PACKAGES
if [ -e /dev/kvm ]; then
  chgrp kvm /dev/kvm && chmod 660 /dev/kvm   # QEMU runs as libvirt-qemu, in group kvm
fi
if ! virsh -q -c qemu:///system version >/dev/null 2>&1; then
  echo "e2e set-up: starting virtlogd and libvirtd"
  for _ in $(seq 1 100); do
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d   # a daemon still shutting down is waited for
    virsh -q -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
virsh -q -c qemu:///system version >/dev/null
# The guest lives where QEMU (user libvirt-qemu) can read it, whatever folder this clone is in.
guest=${VR_E2E_GUEST:-/var/lib/libvirt/images/virt-reconcile-e2e}
if [ ! -s "$guest/vmlinuz" ] && [ -s .cache/guest/vmlinuz ] && [ -s .cache/guest/initrd.img ]; then
  mkdir -p "$guest"   # an older checkout built it into .cache/guest: reuse it, no download
  for file in initrd.img vmlinuz; do   # vmlinuz last: build-guest.sh takes both present as built
    cp .cache/guest/$file "$guest/$file.tmp" && mv "$guest/$file.tmp" "$guest/$file"
  done
fi
scripts/build-guest.sh "$guest"
