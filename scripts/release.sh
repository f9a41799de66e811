#!/usr/bin/env bash
# Writes a release: the single-file binary, the one-folder build as a tarball, SHA256SUMS.
#
#   scripts/release.sh [--no-build] [OUT]     (OUT defaults to dist/release)
#
# OUT/shimmy-<version>-linux-x86_64          the one file to download and run
# OUT/shimmy-<version>-linux-x86_64.tar.gz   the same program as a folder (starts faster:
#                                            nothing to unpack at each launch)
# OUT/SHA256SUMS                             check with: sha256sum --check SHA256SUMS
#
# It builds first with scripts/build_binary.sh; --no-build packs what dist/ holds.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
if [ "${1:-}" = "--no-build" ]; then
    build=0
    shift
fi
out=${1:-dist/release}
[ "$build" = 0 ] || ./scripts/build_binary.sh

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' shimmy/__init__.py)
stem=shimmy-$version-linux-x86_64
for needed in dist/shimmy dist/shimmy-dir/shimmy; do
    [ -f "$needed" ] || { echo "$needed is missing: run scripts/build_binary.sh" >&2; exit 1; }
done

mkdir -p "$out"
rm -f "$out/$stem" "$out/$stem.tar.gz" "$out/SHA256SUMS"
cp dist/shimmy "$out/$stem"
chmod 755 "$out/$stem"
# the folder inside the tarball is named like the release; same bytes for the same build
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    --transform "s,^dist/shimmy-dir,$stem," -czf "$out/$stem.tar.gz" dist/shimmy-dir
(cd "$out" && sha256sum "$stem" "$stem.tar.gz" > SHA256SUMS)
ls -l "$out"
cat "$out/SHA256SUMS"
