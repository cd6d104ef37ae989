#!/usr/bin/env bash
# Set up the fleet tier: libvirtd (package libvirt-daemon; libvirt's test driver, which every lab
# daemon serves, is built into libvirt0's libvirt.so) and setpriv (util-linux), installed when
# missing. The lab itself (tests/fleetlab.py) creates its user vr-fleet and starts and stops its
# own daemons, each by PID. Without root it changes nothing: the fleet tests then skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="libvirt-daemon util-linux passwd"

if [ "$(id -u)" -ne 0 ]; then
  echo "fleet set-up: not root, nothing installed (the fleet tests skip without root)"
  exit 0
fi
# shellcheck disable=SC2086
scripts/ensure-system-packages.sh $PACKAGES
test -x /usr/sbin/libvirtd
