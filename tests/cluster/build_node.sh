#!/usr/bin/env bash
# Build the local real node's binaries (tests/cluster/node.py) into a cache outside the repo:
#
#   ${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}/node-<k8s version>_coredns-<version>/bin/
#     kubelet, kube-proxy   Kubernetes' own, from the release of the control plane (node/go.mod)
#     node-reset            removes every pod sandbox through the CRI (node/reset/main.go)
#     coredns               CoreDNS with the plugins the cluster DNS uses (coredns/main.go)
#     pause                 the pod sandbox's process, static C (pause.c)
#
# and, as root with apt-get and when missing, installs Debian's containerd, runc, CNI plugins,
# iptables and a static busybox (the test image). Binaries already there are kept: only the
# first build on a machine is slow (see tests/cluster/README.md). Output goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module_version() {  # module_version <go.mod> <module path>: its required version
  awk -v m="$2" '$1 == "require" && $2 == m {print $3} $1 == m {print $2}' "$1" | head -1
}
k8s_version="$(module_version "$here/node/go.mod" k8s.io/kubernetes)"
coredns_version="$(module_version "$here/coredns/go.mod" github.com/coredns/coredns)"
if [[ -z "$k8s_version" || -z "$coredns_version" ]]; then
  echo "build_node.sh: cannot read the pinned versions from node/go.mod and coredns/go.mod" >&2
  exit 1
fi

packages=(containerd runc containernetworking-plugins iptables busybox-static)
need=()
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
[[ -x /usr/lib/cni/bridge || -x /opt/cni/bin/bridge ]] || need+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if ((${#need[@]})); then
  if [[ "$(id -u)" = 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "build_node.sh: installing ${need[*]} (Debian's packages) for the real node" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "build_node.sh: missing ${need[*]} (apt-get install ${packages[*]}):" \
         "the real-node tests will be skipped" >&2
  fi
fi

cache="${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}"
bin="$cache/node-${k8s_version}_coredns-${coredns_version}/bin"
mkdir -p "$bin"
if ! command -v go >/dev/null 2>&1; then
  echo "build_node.sh: go not found; install Go >= 1.26 to build the real node" >&2
  exit 1
fi

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
    echo "build_node.sh: $name present" >&2
    return
  fi
  echo "build_node.sh: building $name ($pkg) ..." >&2
  local start=$SECONDS
  (cd "$dir" && GOFLAGS=-mod=readonly go build "${flags[@]}" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "build_node.sh: built $name in $((SECONDS - start)) s" >&2
}

build "$here/node" k8s.io/kubernetes/cmd/kubelet kubelet
build "$here/node" k8s.io/kubernetes/cmd/kube-proxy kube-proxy
build "$here/node" ./reset node-reset
build "$here/coredns" . coredns
if [[ ! -x "$bin/pause" ]]; then
  cc="${CC:-gcc}"
  if ! command -v "$cc" >/dev/null 2>&1; then
    echo "build_node.sh: $cc not found: cannot build the pause binary (apt-get install gcc)" >&2
    exit 1
  fi
  "$cc" -static -Os -Wall -Wextra -Werror -o "$bin/pause.tmp" "$here/pause.c"
  strip "$bin/pause.tmp"
  mv "$bin/pause.tmp" "$bin/pause"
  echo "build_node.sh: built pause" >&2
fi
printf '%s\n%s\n' "$k8s_version" "$coredns_version" > "$bin/../VERSION"
echo "build_node.sh: binaries in $bin" >&2
