#!/usr/bin/env bash
# Set up the browser tier: Debian's chromium and its chromedriver, which selenium drives headless.
# As root (CI): install them when missing. Without root it changes nothing: the browser tests then
# skip with one clear reason when /usr/bin/chromedriver or chromium is absent.
# VR_CHROMIUM and VR_CHROMEDRIVER name another browser and driver to use instead (a CI image's own
# Chrome, or a system whose chromium is not Debian's): then nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="chromium chromium-driver"

if [ -n "${VR_CHROMIUM:-}" ] && [ -n "${VR_CHROMEDRIVER:-}" ]; then
  "$VR_CHROMEDRIVER" --version >/dev/null
  echo "browser set-up: using $VR_CHROMIUM and $VR_CHROMEDRIVER"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "browser set-up: not root, nothing installed (tests skip if chromium is missing)"
  exit 0
fi
# shellcheck disable=SC2086
scripts/ensure-system-packages.sh $PACKAGES
chromedriver --version >/dev/null   # the driver runs (selenium talks to it, never a downloaded one)
