"""A run directory in a bucket (``--output gs://bucket/prefix``).

The trainer writes under ``local`` (in the scratch volume); ``push`` / ``pull`` / ``publish``
move files between it and the bucket. ``publish`` replaces a folder (the report, the model)
only once its new version is completely uploaded, through a manifest under
``<prefix>/.staging/`` that the next process opened on the same output rolls forward if this one
was killed half-way (see ``GCSRunDir.publish``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from google.cloud import storage

from trainer.core.errors import ConfigError, DataError
from trainer.storage import gcs, transfer
from trainer.storage.rundir import RunDir
from trainer.storage.uri import GCS_SCHEME, check_relative, join, parse_uri, slug

log = logging.getLogger(__name__)

STAGING = ".staging"  # under the run prefix: trees being published (see GCSRunDir.publish)


class GCSRunDir(RunDir):
    """A run directory in a bucket: the trainer writes under ``local`` (in ``scratch``), and
    ``push`` / ``pull`` / ``publish`` move files between it and ``gs://bucket/prefix``.

    Opening checks that the bucket exists and is writable (a probe object is written and deleted),
    so a wrong bucket or missing permission fails before training, not after it, and finishes a
    ``publish`` that an earlier process was killed in the middle of (see ``publish``).
    """

    def __init__(self, uri: str, scratch: Path, workers: int = gcs.DEFAULT_WORKERS, key: str = "output",
                 recover: bool = True):
        self.key = key  # the setting that named it, for the messages (output, promote_to)
        self.bucket_name, self.prefix = parse_uri(uri)
        super().__init__(f"{GCS_SCHEME}{join(self.bucket_name, self.prefix)}",
                         Path(scratch) / "gcs-run" / slug(self.bucket_name, self.prefix))
        self.workers = workers
        self.local.mkdir(parents=True, exist_ok=True)
        self._bucket = gcs.client().bucket(self.bucket_name)
        self._check_writable()
        if recover:  # not where another run may be publishing right now (a promotion target)
            self._recover()

    def _name(self, rel: str) -> str:
        return join(self.prefix, check_relative(rel).as_posix())

    def uri_of(self, rel: str) -> str:
        return f"{GCS_SCHEME}{self.bucket_name}/{self._name(rel)}"

    def _check_writable(self) -> None:
        probe = self._bucket.blob(self._name(f".write-probe-{uuid.uuid4().hex}"))
        flag = "--output" if self.key == "output" else self.key
        missing = gcs.missing_bucket(self.bucket_name, self.uri, ConfigError, flag)
        with gcs.errors(f"writing to {self.uri}", missing):
            probe.upload_from_string(b"", retry=gcs.RETRY, if_generation_match=0)
            probe.delete(retry=gcs.RETRY)

    def _list(self, rel: str) -> list[storage.Blob]:
        """The objects under the folder ``rel``."""
        prefix = self._name(rel) + "/"
        return list(gcs.client().list_blobs(self.bucket_name, prefix=prefix, retry=gcs.RETRY))

    def push(self, rel: str) -> None:
        path = self.local / rel
        what = f"uploading {self.uri_of(rel)}"
        with gcs.errors(what):
            if path.is_dir():
                files = transfer.files_under(path)
                transfer.upload_files(self._bucket, path, files, lambda f: self._name(f"{rel}/{f}"),
                                      self.workers, what)
            elif path.is_file():
                transfer.upload(self._bucket, path, self._name(rel))
            else:
                raise FileNotFoundError(f"push: {path} does not exist")

    def pull(self, rel: str) -> bool:
        name = self._name(rel)
        what = f"downloading {self.uri_of(rel)}"
        with gcs.errors(what):
            try:
                transfer.download(self._bucket.blob(name), self.local / rel)
                return True
            except gcs.NotFound:
                pass
            blobs = [b for b in self._list(rel) if not b.name.endswith("/")]
            if not blobs:
                return False
            wanted = transfer.relative_names(blobs, name + "/", self.uri_of(rel))
            transfer.parallel(lambda item: transfer.download(item[1], self.local / rel / item[0]),
                              list(wanted.items()), self.workers, what, sum(b.size or 0 for b in blobs))
            return True

    def remove(self, rel: str) -> None:
        super().remove(rel)
        with gcs.errors(f"deleting {self.uri_of(rel)}"):
            blobs = self._list(rel)
            try:
                self._bucket.delete_blob(self._name(rel), retry=gcs.RETRY)
            except gcs.NotFound:
                pass
            self._delete(blobs)

    def create(self, rel: str, data: bytes) -> bool:
        blob = self._bucket.blob(self._name(rel))
        with gcs.errors(f"writing {self.uri_of(rel)}"):
            try:  # a retry after a lost reply sees its own object: False, which callers check
                blob.upload_from_string(data, retry=gcs.RETRY, if_generation_match=0)
            except gcs.PreconditionFailed:
                return False
        return True

    def read(self, rel: str) -> bytes | None:
        data, _generation = self._read(rel)
        return data

    def _read(self, rel: str) -> tuple[bytes | None, int | None]:
        blob = self._bucket.blob(self._name(rel))
        with gcs.errors(f"reading {self.uri_of(rel)}"):
            try:
                data = blob.download_as_bytes(retry=gcs.RETRY)
            except gcs.NotFound:
                return None, None
        return data, blob.generation

    def delete_if(self, rel: str, data: bytes) -> bool:
        current, generation = self._read(rel)
        if current != data:
            return False
        with gcs.errors(f"deleting {self.uri_of(rel)}"):
            try:  # only the generation that was read: a newer one (someone else's) stays
                self._bucket.blob(self._name(rel)).delete(retry=gcs.RETRY, if_generation_match=generation)
            except (gcs.PreconditionFailed, gcs.NotFound):
                return False
        return True

    def _delete(self, blobs: Iterable[storage.Blob]) -> None:
        def delete(blob: storage.Blob) -> int:
            try:
                blob.delete(retry=gcs.RETRY)
            except gcs.NotFound:
                pass  # already gone: deleting is idempotent
            return 0

        items = list(blobs)
        transfer.parallel(delete, items, self.workers, f"deleting {len(items)} objects under {self.uri}", 0)

    def publish(self, staging: Path, rel: str) -> None:
        """Replace the folder ``rel`` in the bucket with the complete tree ``staging``.

        1. every file is uploaded under ``<prefix>/.staging/<token>/files/`` (slow, may fail:
           the published ``rel`` is untouched until this is done);
        2. ``.staging/<token>/manifest.json`` is written: from here on the new tree is complete;
        3. the files are copied server-side into ``rel`` and objects of the old tree that the new
           one lacks are deleted; then the manifest, then the staged copies.

        A process killed in 1-2 leaves the old ``rel`` as it was; one killed in 3 (a few
        server-side copies, well under a second for a report) leaves a mix that the next
        ``GCSRunDir`` opened on the same output completes from the manifest before anything else.
        The local copy is then replaced as ``RunDir.publish`` does.
        """
        token = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        base = f"{STAGING}/{token}"
        files = transfer.files_under(staging)
        what = f"publishing {self.uri_of(rel)}"
        with gcs.errors(what):
            transfer.upload_files(self._bucket, staging, files, lambda f: self._name(f"{base}/files/{f}"),
                                  self.workers, what, only_new=True)
            manifest = {"rel": rel, "files": files}
            self._bucket.blob(self._name(f"{base}/manifest.json")).upload_from_string(
                json.dumps(manifest), content_type="application/json", retry=gcs.RETRY, if_generation_match=0)
            self._commit(token, manifest)
        super().publish(staging, rel)

    def _commit(self, token: str, manifest: dict) -> None:
        rel, files = manifest["rel"], manifest["files"]
        base = f"{STAGING}/{token}"
        new = set(files)

        def copy(f: str) -> int:
            src = self._bucket.blob(self._name(f"{base}/files/{f}"))
            self._bucket.copy_blob(src, self._bucket, self._name(f"{rel}/{f}"), retry=gcs.RETRY)
            return 0

        transfer.parallel(copy, files, self.workers, f"committing {self.uri_of(rel)}", 0)
        prefix = self._name(rel) + "/"
        self._delete(b for b in self._list(rel) if b.name[len(prefix):] not in new)
        self._bucket.blob(self._name(f"{base}/manifest.json")).delete(retry=gcs.RETRY)
        self._delete(self._list(base))
        log.info("published %s (%d files)", self.uri_of(rel), len(files))

    def _recover(self) -> None:
        """Finish publishes whose manifest was written; drop staged trees that never got one."""
        with gcs.errors(f"reading {self.uri_of(STAGING)}"):
            staged = self._list(STAGING)
            if not staged:
                return
            root = self._name(STAGING) + "/"
            tokens: dict[str, list[storage.Blob]] = {}
            for blob in staged:
                tokens.setdefault(blob.name[len(root):].split("/", 1)[0], []).append(blob)
            for token, blobs in sorted(tokens.items()):
                manifest_name = self._name(f"{STAGING}/{token}/manifest.json")
                manifest = next((b for b in blobs if b.name == manifest_name), None)
                if manifest is not None:
                    try:
                        data = json.loads(manifest.download_as_bytes(retry=gcs.RETRY))
                        data["rel"], data["files"]
                    except (ValueError, KeyError, TypeError):
                        where = self.uri_of(f"{STAGING}/{token}") + "/"
                        raise DataError(
                            f"staging manifest {where}manifest.json is corrupt (an interrupted "
                            f"publish): delete {where} and run again") from None
                    log.warning("finishing the interrupted publish of %s", self.uri_of(data["rel"]))
                    self._commit(token, data)
                else:
                    log.info("removing %d objects of an interrupted upload under %s", len(blobs), self.uri_of(STAGING))
                    self._delete(blobs)
