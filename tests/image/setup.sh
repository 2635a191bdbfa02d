#!/usr/bin/env bash
# What the image tests (tests/image/) need on this machine, installed from Debian's packages:
# podman (runs the image; builds with buildah inside), buildah, mmdebstrap (the base stand-in,
# tests/image/standin_base.sh), skopeo, uidmap, runc. Called by `make test-services`.
#
# Without root or apt-get it installs nothing: under CI=true a missing tool fails, elsewhere it
# says which tests will be skipped. Also sets the one podman setting this kind of VM needs:
# root lacks CAP_SYS_RESOURCE and the open-files hard limit is 20000 here, so `podman run`
# fails with "error setting rlimit type 7" until containers.conf sets default_ulimits to
# limits the machine allows.
set -euo pipefail

log() { echo "tests/image/setup.sh: $*" >&2; }
need=()
for cmd in podman buildah mmdebstrap skopeo newuidmap runc; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    pkgs=(); for cmd in "${need[@]}"; do [ "$cmd" = newuidmap ] && pkgs+=(uidmap) || pkgs+=("$cmd"); done
    log "installing ${pkgs[*]} (Debian's packages) for the image tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  elif [ "${CI:-}" = true ]; then
    log "${need[*]} not found and cannot apt-get them: CI needs them for tests/image"; exit 1
  else
    log "${need[*]} not found: the image tests (tests/image) will be skipped (apt-get install podman buildah mmdebstrap skopeo uidmap runc)"
    exit 0
  fi
fi

# default_ulimits: the hard limits this machine allows (never more than it has), written once
# into a drop-in so the distribution's containers.conf stays untouched.
nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
[ "$nproc" = unlimited ] && nproc=32768
[ "$nproc" -gt 32768 ] && nproc=32768
if [ "$(id -u)" = 0 ]; then
  conf=/etc/containers/containers.conf.d/50-kubetrain-ulimits.conf
  want="default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
  if ! grep -qsF "$want" "$conf"; then
    mkdir -p "$(dirname "$conf")"
    printf '# written by kubetrain tests/image/setup.sh: podman run fails with "error setting rlimit"\n# when the defaults exceed what this machine allows\n[containers]\n%s\n' "$want" > "$conf"
    log "wrote $conf: $want"
  fi
fi

# On cgroup v1 or hybrid (this VM: /sys/fs/cgroup is a tmpfs), crun, which podman prefers when
# both are installed, refuses to create containers ("cgroups in hybrid mode not supported");
# runc runs them. Said once, in a drop-in of its own.
if [ "$(id -u)" = 0 ] && [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
  conf=/etc/containers/containers.conf.d/50-kubetrain-runtime.conf
  if ! grep -qsF 'runtime = "runc"' "$conf"; then
    mkdir -p "$(dirname "$conf")"
    printf '# written by kubetrain tests/image/setup.sh: crun refuses cgroup v1/hybrid hosts\n[engine]\nruntime = "runc"\n' > "$conf"
    log "wrote $conf: runtime = runc (cgroup v1/hybrid host)"
  fi
fi
