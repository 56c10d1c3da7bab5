#!/usr/bin/env bash
# Builds the Debian package dist/cframe_<version>_amd64.deb (or into the
# directory given) with dpkg-deb: the three programs in /usr/bin, the units
# in /lib/systemd/system, sample configs in /etc/cframe (conffiles), the
# state directories, and the maintainer scripts of scripts/deb/debian.
# VERSION overrides the version (default: 0.0.0+git<commit time>.<commit>,
# so that a later commit's package upgrades an earlier one's).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist}")
if [ -z "${VERSION:-}" ]; then
  VERSION=0.0.0+git$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S).$(git rev-parse --short HEAD)
  git diff --quiet HEAD 2>/dev/null || VERSION+=.dirty
fi
export VERSION
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
scripts/build.sh "$stage/bin" >/dev/null

install -d -m 0755 "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/cframe" \
  "$root/usr/share/doc/cframe" "$root/DEBIAN"
install -m 0755 "$stage"/bin/cframe-controller "$stage"/bin/cframe-edge "$stage"/bin/cframectl "$root/usr/bin/"
install -m 0644 systemd/cframe-controller.service systemd/cframe-edge.service "$root/lib/systemd/system/"
# The configs hold the join secret: the edge's is root's alone, the
# controller's readable by its group too (postinst: group cframe).
install -m 0640 "$stage/bin/controller.toml" "$root/etc/cframe/"
install -m 0600 "$stage/bin/edge.toml" "$root/etc/cframe/"
install -d -m 0700 "$root/var/lib/cframe" "$root/var/lib/cframe-edge"
install -m 0644 scripts/deb/debian/README.Debian "$root/usr/share/doc/cframe/"
install -m 0755 scripts/deb/debian/postinst scripts/deb/debian/prerm scripts/deb/debian/postrm "$root/DEBIAN/"
printf '/etc/cframe/controller.toml\n/etc/cframe/edge.toml\n' >"$root/DEBIAN/conffiles"
(cd "$root" && find usr lib -type f -exec md5sum {} +) >"$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@SIZE@/$size/" scripts/deb/debian/control >"$root/DEBIAN/control"

mkdir -p "$out"
deb=$out/cframe_${VERSION}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "built $deb"
