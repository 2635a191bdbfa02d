#!/usr/bin/env bash
# Build Kueue's controller manager (sigs.k8s.io/kueue, pinned by kueue/go.mod) through the Go
# module proxy, and copy the release's CRDs and webhook manifests next to it:
#
#   ${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}/kueue-<version>/bin/kueue
#   ${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}/kueue-<version>/config/{crd/*.yaml,webhook.yaml}
#
# A binary already there is kept (cold: 30 min on a busy 2-core machine; see
# tests/cluster/README.md). One line of the release's cmd/kueue/main.go is changed, through
# `go build -overlay` (the module's files are never edited): the metrics server's certificate
# directory, hard-coded to /etc/kueue/metrics/certs when Kueue does not manage its own
# certificates, is read from $KUEUE_METRICS_CERT_DIR when set, so a cluster keeps its
# certificates in its own state directory. Everything it prints goes to stderr. Called by build.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "require" && $2 == "sigs.k8s.io/kueue" {print $3} $1 == "sigs.k8s.io/kueue" {print $2}' \
  "$here/kueue/go.mod" | head -1)"
if [[ -z "$version" ]]; then
  echo "build_kueue.sh: cannot read the pinned Kueue version from kueue/go.mod" >&2
  exit 1
fi
cache="${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}"
out="$cache/kueue-$version"
if [[ -x "$out/bin/kueue" && -f "$out/config/webhook.yaml" ]]; then
  echo "build_kueue.sh: kueue $version present" >&2
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build_kueue.sh: go not found; install Go >= 1.26 to build Kueue" >&2
  exit 1
fi
mkdir -p "$out/bin" "$out/config/crd" "$out/overlay"
start=$SECONDS
echo "build_kueue.sh: building kueue $version ..." >&2
cd "$here/kueue"
export GOFLAGS=-mod=readonly
go mod download sigs.k8s.io/kueue
src="$(go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"

# A Go overlay may not replace files in the module cache, so the changed main.go is built as a
# package of this wrapper module that exists only in the overlay (kueuemain/): the same code
# and imports, everything else compiled from the module cache as released.
main="$src/cmd/kueue/main.go"
fixed='metricsCertPath := "/etc/kueue/metrics/certs"'
if ! grep -qF "$fixed" "$main"; then
  echo "build_kueue.sh: $main no longer has the line this build changes ($fixed);" \
    "see the comment at the top of build_kueue.sh" >&2
  exit 1
fi
patched="$out/overlay/main.go"
sed "s|$fixed|metricsCertPath := func() string { if d := os.Getenv(\"KUEUE_METRICS_CERT_DIR\"); d != \"\" { return d }; return \"/etc/kueue/metrics/certs\" }()|" \
  "$main" > "$patched"
printf '{"Replace": {"%s": "%s"}}\n' "$here/kueue/kueuemain/main.go" "$patched" > "$out/overlay/overlay.json"

ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$version"
go build -trimpath "-ldflags=$ldflags" "-p=${KUBETRAIN_BUILD_JOBS:-2}" \
  "-overlay=$out/overlay/overlay.json" -o "$out/bin/kueue.tmp" ./kueuemain

# The release's own manifests: CRDs as generated (no conversion webhook: every kubetrain object
# and Kueue itself use the storage version, v1beta2), and the webhook configurations, whose
# service references kueue.py turns into loopback URLs.
cp "$src"/config/components/crd/bases/*.yaml "$out/config/crd/"
cp "$src/config/components/webhook/manifests.yaml" "$out/config/webhook.yaml"
chmod -R u+w "$out/config"
mv "$out/bin/kueue.tmp" "$out/bin/kueue"
echo "build_kueue.sh: built kueue $version in $((SECONDS - start)) s into $out/bin" >&2
