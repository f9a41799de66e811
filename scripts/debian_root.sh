#!/usr/bin/env bash
# Makes a minimal Debian 12 root (debootstrap --variant=minbase: no Python, no compiler,
# no network tools) for the binary's chroot test, once, under ~/.cache/shimmy/. Prints
# its path. Needs root; installs debootstrap with apt-get if it is missing, and fetches
# from the Debian mirror this machine's apt already uses (or DEBIAN_MIRROR).
set -euo pipefail

root=${SHIMMY_DEBIAN_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/shimmy/debian-bookworm-minbase}
if [ -f "$root/etc/debian_version" ]; then
    echo "$root"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "debian_root.sh: debootstrap and chroot need root" >&2
    exit 1
fi

mirror() {
    # the first Debian archive named in apt's sources (one-line or deb822 format)
    local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    {
        sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\(\S*\) bookworm .*/\2/p' "${files[@]}" 2>/dev/null
        sed -n 's/^URIs: *\(\S*\/debian\)\/\{0,1\}$/\1/p' "${files[@]}" 2>/dev/null
    } | grep -v -- '-security' | head -n 1
}

url=${DEBIAN_MIRROR:-$(mirror)}
if [ -z "$url" ]; then
    echo "debian_root.sh: no Debian mirror in apt's sources; set DEBIAN_MIRROR" >&2
    exit 1
fi
command -v debootstrap >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
rm -rf "$root.partial"
mkdir -p "$(dirname "$root")"
debootstrap --variant=minbase bookworm "$root.partial" "$url" >&2
mv "$root.partial" "$root"
echo "$root"
