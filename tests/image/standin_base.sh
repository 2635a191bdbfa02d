#!/usr/bin/env bash
# A local stand-in for the CPU image's public base (python:3.11.11-slim-bookworm), made from
# Debian's own packages because no container registry is reachable from the test machines:
#   mmdebstrap --variant=minbase --include=python3,... bookworm base.tar <this machine's Debian sources>
#   podman import base.tar localhost/kubetrain/python-standin:3.11-slim-bookworm
# Cached in ${KUBETRAIN_CACHE:-~/.cache/kubetrain}/images/ and rebuilt only when missing (the
# tarball's name carries a hash of this script, so changing the package list rebuilds it).
# Prints the stand-in's image name on stdout; everything else goes to stderr.
#
# How it differs from the public base, honestly:
# - Python is Debian's python3 (3.11.2, /usr/bin/python3), not python.org's 3.11.11 built into
#   /usr/local. /usr/local/bin/python and python3 are symlinks to it, so the Dockerfile's
#   `python` resolves the same way on both bases; pip is Debian's python3-pip (23.0.1), and
#   Debian's EXTERNALLY-MANAGED marker is removed so `pip install` behaves as on the public base
#   (into /usr/local/lib/python3.11/dist-packages instead of .../site-packages).
# - The same Debian release (bookworm), the same extra runtime packages the public base adds
#   (ca-certificates, netbase, tzdata), LANG=C.UTF-8 as the public base sets.
# - It also trusts this machine's extra CAs (/usr/local/share/ca-certificates/*.crt), because
#   where egress goes through a TLS-intercepting proxy pip cannot reach PyPI otherwise. Images
#   built from the stand-in are for this machine's tests, not for publishing.
set -euo pipefail

STANDIN_IMAGE=${KUBETRAIN_STANDIN_IMAGE:-localhost/kubetrain/python-standin:3.11-slim-bookworm}
PACKAGES=python3,python3-pip,python-is-python3,ca-certificates,netbase,tzdata
CACHE=${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}/images
KEY=$(cat "${BASH_SOURCE[0]}" /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-12)
TARBALL=$CACHE/python-standin-bookworm-$KEY.tar

log() { echo "standin_base.sh: $*" >&2; }

tool=${CONTAINER_TOOL:-}
if [ -z "$tool" ]; then
  if command -v podman >/dev/null 2>&1; then tool=podman
  elif command -v buildah >/dev/null 2>&1; then tool=buildah
  else log "neither podman nor buildah found (tests/image/setup.sh installs them)"; exit 1; fi
fi
label() { "$tool" image inspect --format '{{index .Labels "kubetrain.standin"}}' "$STANDIN_IMAGE" 2>/dev/null || true; }

if [ "$(label)" = "$KEY" ]; then
  echo "$STANDIN_IMAGE"; exit 0
fi

if [ ! -f "$TARBALL" ]; then
  command -v mmdebstrap >/dev/null 2>&1 || { log "mmdebstrap not found (tests/image/setup.sh installs it)"; exit 1; }
  # The machine's configured Debian sources (deb822 .sources or one-line .list files), as apt
  # itself uses them; other vendors' lists are left out.
  sources=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && grep -Eq '^[^#]*(deb\.debian\.org|/debian|debian-security)' "$f" && sources+=("$f")
  done
  [ ${#sources[@]} -gt 0 ] || { log "no Debian mirror configured in /etc/apt/sources.list*"; exit 1; }
  # This machine's own extra CAs (a TLS-intercepting egress proxy signs PyPI's certificate
  # here): without them pip inside the build cannot reach PyPI.
  ca_hooks=()
  for crt in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$crt" ] && ca_hooks+=(--customize-hook="upload $crt /usr/local/share/ca-certificates/$(basename "$crt")")
  done
  [ ${#ca_hooks[@]} -gt 0 ] && ca_hooks+=(--customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null 2>&1')
  mkdir -p "$CACHE"
  partial=$CACHE/partial-$KEY.tar  # mmdebstrap picks the output format from the name's ending
  rm -rf "$partial"
  log "building the base stand-in with mmdebstrap from ${sources[*]} (about 1-2 minutes) ..."
  start=$SECONDS
  mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='ln -sf /usr/bin/python3 "$1"/usr/local/bin/python3' \
    --customize-hook='ln -sf /usr/bin/python3 "$1"/usr/local/bin/python' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "${ca_hooks[@]}" \
    bookworm "$partial" "${sources[@]}"
  mv "$partial" "$TARBALL"
  find "$CACHE" -maxdepth 1 -name 'python-standin-bookworm-*.tar' ! -name "$(basename "$TARBALL")" -delete
  log "base stand-in tarball: $TARBALL ($(du -h "$TARBALL" | cut -f1), $((SECONDS - start)) s)"
fi

log "importing $TARBALL as $STANDIN_IMAGE"
changes=(--change "ENV=LANG=C.UTF-8" --change "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
         --change "CMD=[\"python3\"]" --change "LABEL=kubetrain.standin=$KEY")
if [ "$tool" = podman ]; then
  podman import --quiet "${changes[@]}" "$TARBALL" "$STANDIN_IMAGE" >/dev/null
else
  # buildah has no `import`: a container from scratch with the tarball unpacked, committed
  ctr=$(buildah from scratch)
  buildah add --quiet "$ctr" "$TARBALL" / >/dev/null
  buildah config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd python3 --label "kubetrain.standin=$KEY" "$ctr"
  buildah commit --quiet --rm "$ctr" "$STANDIN_IMAGE" >/dev/null
fi
echo "$STANDIN_IMAGE"
