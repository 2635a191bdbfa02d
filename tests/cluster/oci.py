"""Write small OCI image archives without a container engine (for the local real node).

No registry is reachable from this machine, so the node's few tiny images (the pod sandbox's
`pause`, the test image with a static busybox, the kind overlay's object store) are made here
from files already on the machine: one uncompressed layer, an OCI config, a manifest and an
`index.json` naming the image, in the layout `ctr images import` reads. Archives are
deterministic: the same files give the same digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Entry:
    """One file, directory or symlink of a layer."""

    path: str                 # inside the image, without the leading "/"
    source: Path | None = None  # a file to copy (None: a directory, or `data`/`link` below)
    data: bytes | None = None
    link: str | None = None   # symlink target
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass
class ImageConfig:
    entrypoint: list[str]
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    env: list[str] = field(default_factory=lambda: [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    workdir: str = "/"
    labels: dict[str, str] = field(default_factory=dict)


def layer(entries: list[Entry]) -> bytes:
    """An uncompressed tar layer holding `entries` (parents must be listed before children)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path.lstrip("/"))
            info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, 0
            if entry.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.link
                tar.addfile(info)
            elif entry.source is None and entry.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                data = entry.data if entry.data is not None else entry.source.read_bytes()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


def write_archive(path: Path, name: str, layers: list[bytes], config: ImageConfig) -> Path:
    """Write an OCI archive of one image called `name` (a full reference, e.g.
    `docker.io/library/pause:3.10`), whose layers are `layers`, bottom first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd or None,
            "User": config.user,
            "Env": config.env,
            "WorkingDir": config.workdir,
            "Labels": config.labels or None,
        },
        "rootfs": {"type": "layers",
                   "diff_ids": [f"sha256:{hashlib.sha256(x).hexdigest()}" for x in layers]},
        "history": [{"created_by": "tests/cluster/oci.py"} for _ in layers],
    }
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, mode="w") as tar:
        layer_descriptors = [{"mediaType": LAYER_TYPE, "digest": _blob(tar, data),
                              "size": len(data)} for data in layers]
        config_bytes = json.dumps(image_config, sort_keys=True).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": _blob(tar, config_bytes),
                       "size": len(config_bytes)},
            "layers": layer_descriptors,
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        index = {
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MANIFEST_TYPE,
                "digest": _blob(tar, manifest_bytes),
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
            }],
        }
        for member, data in (("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
                             ("index.json", json.dumps(index, sort_keys=True).encode())):
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return path
