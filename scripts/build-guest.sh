#!/usr/bin/env bash
# Build the e2e tier's tiny guest into DIR, once: Debian's cloud kernel and an initramfs holding
# busybox-static and the virtio modules, loaded in the order the balloon needs. The guest prints
# VR-GUEST-READY on the serial console every second once its modules are in, then the size of each
# virtio disk as "VR-DISK vda SECTORS" (512-byte sectors, from /sys/block), so a test sees a disk
# grown live; it powers off on the ACPI power button (graceful shutdown) unless its command line
# has vr.ignore_acpi.
# DIR defaults to $VR_E2E_GUEST, else /var/lib/libvirt/images/virt-reconcile-e2e (the path
# tests/e2e/conftest.py reads): QEMU runs as libvirt-qemu, which must be able to enter every folder
# on the way, and a clone under /root or any mode-700 folder is closed to it. Re-running only
# repairs the modes, unless the guest was built by an older version of this script (its
# guest-version file): then it is built again.
set -euo pipefail
dir=${1:-${VR_E2E_GUEST:-/var/lib/libvirt/images/virt-reconcile-e2e}}
version=2  # raise it when the guest changes (2: virtio_blk, disk sizes on the console)
if [ -s "$dir/vmlinuz" ] && [ -s "$dir/initrd.img" ] && [ "$(cat "$dir/guest-version" 2>/dev/null)" = "$version" ]; then
  chmod 755 "$dir" && chmod 644 "$dir/vmlinuz" "$dir/initrd.img"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
find_kernel() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }
package=$(find_kernel)
if [ -z "$package" ] && [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq && package=$(find_kernel)   # a fresh machine has no package lists yet
fi
[ -n "$package" ] || { echo "build-guest: no linux-image-*-cloud-amd64 package found (apt-get update?)" >&2; exit 1; }
(cd "$work" && apt-get download -qq "$package" 2>/dev/null)
dpkg -x "$work"/linux-image-*.deb "$work/root"
modules=$(echo "$work"/root/lib/modules/*/kernel)
mkdir -p "$work/initrd"/{bin,dev,proc,sys,lib/modules}
cp /bin/busybox "$work/initrd/bin/busybox"
order="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_balloon virtio_blk evdev button"
for module in $order; do
  found=$(find "$modules" -name "$module.ko*" | head -n 1)
  [ -n "$found" ] || { echo "build-guest: module $module not in $package" >&2; exit 1; }
  cp "$found" "$work/initrd/lib/modules/$module.ko"
done
cat > "$work/initrd/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $order; do
  insmod /lib/modules/\$module.ko || echo "vr-guest: cannot load \$module"
done
if ! grep -q vr.ignore_acpi /proc/cmdline; then
  for device in /sys/class/input/event*; do
    if [ "\$(cat \$device/device/name 2>/dev/null)" = "Power Button" ]; then
      ( head -c 1 /dev/input/\${device##*/} >/dev/null; echo "vr-guest: power button"; poweroff -f ) &
    fi
  done
fi
while true; do
  echo VR-GUEST-READY
  for disk in /sys/block/vd*; do
    [ -e "\$disk/size" ] && echo "VR-DISK \${disk##*/} \$(cat "\$disk/size")"
  done
  sleep 1
done
INIT
chmod 755 "$work/initrd/init"
mkdir -p "$dir"
chmod 755 "$dir"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet | gzip -1) > "$dir/initrd.img.tmp"
cp "$work"/root/boot/vmlinuz-* "$dir/vmlinuz.tmp"
mv "$dir/initrd.img.tmp" "$dir/initrd.img"
mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
chmod 644 "$dir/vmlinuz" "$dir/initrd.img"
echo "$version" > "$dir/guest-version"
echo "build-guest: $dir/vmlinuz and $dir/initrd.img from $package"
