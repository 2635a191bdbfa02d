"""A bucket prefix as a ``trainer.storage.Store``: what packing writes to and streaming reads from.

Built on ``gcs.py`` (one client per process, retries, error translation) and ``transfer.py``:
a missing bucket while reading is a data error (exit 3), while writing a configuration error
(exit 2); permissions and credentials are configuration errors.
Object names are checked like a dataset download's, so nothing lands outside its directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trainer.core.errors import ConfigError, DataError
from trainer.storage import gcs, transfer
from trainer.storage.store import Store
from trainer.storage.uri import GCS_SCHEME, check_relative, join, parse_uri

log = logging.getLogger(__name__)


class GCSStore(Store):
    """Files under ``gs://bucket/prefix``; names relative to the prefix."""

    def __init__(self, uri: str, *, create_bucket: bool = False):
        self.bucket_name, self.prefix = parse_uri(uri)
        self.uri = f"{GCS_SCHEME}{join(self.bucket_name, self.prefix)}"
        self._bucket = gcs.client().bucket(self.bucket_name)
        if create_bucket:
            with gcs.errors(f"creating bucket gs://{self.bucket_name}"):
                if not self._bucket.exists(retry=gcs.RETRY):
                    gcs.client().create_bucket(self.bucket_name, retry=gcs.RETRY)
                    log.info("created bucket gs://%s", self.bucket_name)

    def _name(self, rel: str) -> str:
        return join(self.prefix, check_relative(rel).as_posix())

    def _reading(self, what: str):
        return gcs.errors(what, gcs.missing_bucket(self.bucket_name, self.uri, DataError, "--data"))

    def _writing(self, what: str):
        return gcs.errors(what, gcs.missing_bucket(self.bucket_name, self.uri, ConfigError, "destination"))

    def local_path(self, rel: str) -> Path | None:
        return None

    def read_bytes(self, rel: str) -> bytes | None:
        with self._reading(f"reading {self.uri_of(rel)}"):
            try:
                return self._bucket.blob(self._name(rel)).download_as_bytes(retry=gcs.RETRY)
            except gcs.NotFound:
                if not self._bucket.exists(retry=gcs.RETRY):
                    raise  # a missing bucket, not a missing object
                return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self._writing(f"writing {self.uri_of(rel)}"):
            self._bucket.blob(self._name(rel)).upload_from_string(data, retry=gcs.RETRY)

    def put_file(self, src: Path, rel: str) -> None:
        with self._writing(f"uploading {self.uri_of(rel)}"):
            transfer.upload(self._bucket, src, self._name(rel))

    def get_file(self, rel: str, dest: Path) -> None:
        what = f"downloading {self.uri_of(rel)}"
        with gcs.errors(what, lambda: DataError(f"{self.uri_of(rel)} does not exist")):
            transfer.download(self._bucket.blob(self._name(rel)), dest)

    def list(self, rel: str = "") -> dict[str, int]:
        base = self._name(rel) + "/" if rel else (f"{self.prefix}/" if self.prefix else "")
        strip = f"{self.prefix}/" if self.prefix else ""
        with self._reading(f"listing {self.uri_of(rel) if rel else self.uri}"):
            return {b.name[len(strip):]: int(b.size or 0)
                    for b in gcs.client().list_blobs(self.bucket_name, prefix=base, retry=gcs.RETRY)
                    if not b.name.endswith("/")}

    def delete(self, rel: str) -> None:
        with self._writing(f"deleting {self.uri_of(rel)}"):
            try:
                self._bucket.delete_blob(self._name(rel), retry=gcs.RETRY)
            except gcs.NotFound:
                pass
