#!/usr/bin/env bash
# Makes a minimal Debian root (debootstrap --variant=minbase: no Python, no compiler, no
# network tools) for the binary's chroot tests, once, under ~/.cache/shimmy/, and prints
# its path:
#
#   scripts/debian_root.sh            Debian 12 (glibc 2.36): the binary must run there
#   scripts/debian_root.sh bullseye   Debian 11 (glibc 2.31): it must refuse, clearly
#
# Needs root; installs debootstrap with apt-get if it is missing, and fetches from the
# Debian mirror this machine's apt already uses (or DEBIAN_MIRROR).
set -euo pipefail

suite=${1:-bookworm}
root=${XDG_CACHE_HOME:-$HOME/.cache}/shimmy/debian-$suite-minbase
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
    local files=() file
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] && files+=("$file")  # sed fails on a missing one (pipefail)
    done
    [ ${#files[@]} -gt 0 ] || return 0
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
debootstrap --variant=minbase "$suite" "$root.partial" "$url" >&2
mv "$root.partial" "$root"
echo "$root"
