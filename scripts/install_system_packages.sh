#!/usr/bin/env bash
# Installs the Debian packages fedsim's real data comes from (offline data sets, speech tools).
# Root on Debian/Ubuntu: installs what is missing. Otherwise: prints the exact command and goes on.
set -u
PACKAGES=(dataset-fashion-mnist flite sox bible-kjv pocketsphinx-testdata
          asterisk-core-sounds-en asterisk-core-sounds-en-g722
          festival festvox-kdlpc16k espeak-ng)  # the last three: held-out test voices
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "fedsim: installing Debian packages: ${missing[*]}"
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive $cmd) >/tmp/fedsim-apt.log 2>&1 \
    || { echo "fedsim: apt-get failed (log: /tmp/fedsim-apt.log); run: sudo apt-get update && sudo $cmd"; exit 0; }
else
  echo "fedsim: missing Debian packages; install them with:"
  echo "    sudo apt-get update && sudo $cmd"
fi
