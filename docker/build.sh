#!/usr/bin/env bash
# Build a trainer image with whichever builder this machine has: docker (if its daemon answers),
# podman or buildah (no daemon needed). Run from anywhere; the build context is the repo root.
#
#   docker/build.sh cpu|gpu [--tag NAME] [--base IMAGE] [--archive FILE] [-- EXTRA BUILD ARGS]
#
#   cpu            docker/Dockerfile.cpu (default tag kubetrain-trainer-cpu:0.1.0)
#   gpu            docker/Dockerfile     (default tag kubetrain-trainer:0.1.0)
#   --base IMAGE   the FROM image (build arg BASE_IMAGE); default: the Dockerfile's public base
#   --archive FILE also write the image as a docker-archive tarball, named
#                  docker.io/library/NAME as a kubelet resolves the manifests' `image: NAME`, for
#                  `ctr -n k8s.io images import FILE`, `kind load image-archive FILE`,
#                  `minikube image load FILE` or `docker load -i FILE`
# CONTAINER_TOOL=docker|podman|buildah picks the builder instead of the first one found.
set -euo pipefail

die() { echo "docker/build.sh: $*" >&2; exit 2; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

variant=${1:-}; shift || true
case $variant in
  cpu) dockerfile=docker/Dockerfile.cpu; tag=kubetrain-trainer-cpu:0.1.0 ;;
  gpu) dockerfile=docker/Dockerfile; tag=kubetrain-trainer:0.1.0 ;;
  *) die "usage: docker/build.sh cpu|gpu [--tag NAME] [--base IMAGE] [--archive FILE] [-- BUILD ARGS]" ;;
esac
base="" archive="" extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --base) base=${2:?--base needs a value}; shift 2 ;;
    --archive) archive=${2:?--archive needs a value}; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument: $1" ;;
  esac
done

tool=${CONTAINER_TOOL:-}
if [ -z "$tool" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then tool=docker
  elif command -v podman >/dev/null 2>&1; then tool=podman
  elif command -v buildah >/dev/null 2>&1; then tool=buildah
  elif command -v docker >/dev/null 2>&1; then die "docker is installed but its daemon does not answer, and neither podman nor buildah is here (Debian/Ubuntu: apt-get install podman)"
  else die "no docker, podman or buildah found: install one (Debian/Ubuntu: apt-get install podman)"; fi
fi

args=(-f "$dockerfile" -t "$tag")
[ -n "$base" ] && args+=(--build-arg "BASE_IMAGE=$base")
# podman and buildah write OCI images by default, which have no SHELL: the Dockerfiles' bash
# with pipefail needs the docker format.
case $tool in
  docker) build=(docker build) ;;
  podman) build=(podman build --format docker) ;;
  buildah) build=(buildah bud --format docker) ;;
  *) die "CONTAINER_TOOL must be docker, podman or buildah, not $tool" ;;
esac
echo "docker/build.sh: ${build[*]} ${args[*]} ${extra[*]} . (with $tool)" >&2
cd "$repo"
"${build[@]}" "${args[@]}" "${extra[@]}" .

if [ -n "$archive" ]; then
  # A kubelet on containerd resolves `image: kubetrain-trainer-cpu:0.1.0` to
  # docker.io/library/kubetrain-trainer-cpu:0.1.0; podman and buildah would name it localhost/...
  case $tag in
    */*/*|*.*/*|localhost/*) full=$tag ;;
    */*) full=docker.io/$tag ;;
    *) full=docker.io/library/$tag ;;
  esac
  mkdir -p "$(dirname "$archive")"
  rm -f "$archive.part"
  case $tool in
    docker) docker save -o "$archive.part" "$tag" ;;
    podman) podman tag "$tag" "$full" && podman save --quiet --format docker-archive -o "$archive.part" "$full" ;;
    buildah) buildah tag "$tag" "$full" && buildah push --quiet "$full" "docker-archive:$archive.part:$full" ;;
  esac
  mv "$archive.part" "$archive"
  echo "docker/build.sh: wrote $archive ($full, $(du -h "$archive" | cut -f1))" >&2
fi
