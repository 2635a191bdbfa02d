#!/usr/bin/env bash
# Build the test control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler) through the Go module proxy into a cache outside the repo:
#
#   ${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}/k8s-<k8s version>_etcd-<etcd version>/bin/
#
# Binaries already there are kept, so only the first build on a machine is slow
# (10-15 min cold on 2 cores, under a second warm; see tests/cluster/README.md).
# Everything it prints goes to stderr. Needs Go >= 1.26.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module_version() {  # module_version <go.mod> <module path>: its required version
  awk -v m="$2" '$1 == "require" && $2 == m {print $3} $1 == m {print $2}' "$1" | head -1
}
k8s_version="$(module_version "$here/kube/go.mod" k8s.io/kubernetes)"
etcd_version="$(module_version "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)"
if [[ -z "$k8s_version" || -z "$etcd_version" ]]; then
  echo "build.sh: cannot read the pinned versions from kube/go.mod and etcd/go.mod" >&2
  exit 1
fi
cache="${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}"
bin="$cache/k8s-${k8s_version}_etcd-${etcd_version}/bin"
mkdir -p "$bin"

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: go not found; install Go >= 1.26 to build the test control plane" >&2
  exit 1
fi

# Lean, reproducible binaries; -p bounds parallel compiles on small machines. The -X flags
# stamp the release into /version as Kubernetes' own build does (else "v0.0.0-master").
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean"
done
flags=(-trimpath "-ldflags=$ldflags" "-p=${KUBETRAIN_BUILD_JOBS:-2}")

build() {  # build <module dir> <package> <output name>
  local dir="$1" pkg="$2" name="$3"
  if [[ -x "$bin/$name" ]]; then
    echo "build.sh: $name present" >&2
    return
  fi
  echo "build.sh: building $name ($pkg) ..." >&2
  local start=$SECONDS
  (cd "$dir" && GOFLAGS=-mod=readonly go build "${flags[@]}" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "build.sh: built $name in $((SECONDS - start)) s" >&2
}

build "$here/etcd" . etcd
build "$here/kube" k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver
build "$here/kube" k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager
build "$here/kube" k8s.io/kubernetes/cmd/kube-scheduler kube-scheduler
printf '%s\n%s\n' "$k8s_version" "$etcd_version" > "$bin/../VERSION"
echo "build.sh: binaries in $bin" >&2
bash "$here/build_kueue.sh"  # Kueue's controller manager, CRDs and webhooks (kueue.py)
