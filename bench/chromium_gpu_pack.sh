#!/bin/bash
# Debian's chromium for the lent GPU machine (Ubuntu 24.04, no browser, none of Chromium's libraries
# but libdrm/libX11/libxcb): chromium, chromium-common and the packages owning every library the
# browser and its bundled .so files link (found with ldd and dpkg -S here, where Debian's chromium is
# installed: `apt-get install -y chromium`), plus fontconfig and one font. ~97 packages, ~131 MB,
# split into parts of at most 60 MB under .chr/p0, .chr/p1, ... (git-ignored) to carry one a call;
# bench/chromium_gpu.sh runs the page there.
set -euo pipefail
[ -x /usr/lib/chromium/chromium ] || { echo "install Debian's chromium here first (apt-get install -y chromium)"; exit 1; }
mkdir -p .chr && (grep -qxF '/.chr/' .git/info/exclude 2>/dev/null || echo /.chr/ >> .git/info/exclude)
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
for f in /usr/lib/chromium/chromium /usr/lib/chromium/*.so; do ldd "$f"; done | awk '/=>/{print $3}' | sort -u |
  while read -r l; do dpkg -S "$(basename "$(readlink -f "$l")")" 2>/dev/null | head -1 | cut -d: -f1; done |
  grep -vxE 'libc6|libgcc-s1|libstdc\+\+6' | sort -u > "$w/pkgs"
printf '%s\n' chromium chromium-common fontconfig-config fonts-dejavu-core >> "$w/pkgs"
mkdir "$w/debs" && (cd "$w/debs" && xargs -a "$w/pkgs" apt-get download >/dev/null 2>&1 || true)
ls "$w/debs" | wc -l
rm -rf .chr/p*; tar -cf - -C "$w/debs" . | split -b 60M -d - "$w/part."
i=0; for p in "$w"/part.*; do mkdir -p .chr/p$i && mv "$p" .chr/p$i/; i=$((i + 1)); done
du -sh .chr/p*
