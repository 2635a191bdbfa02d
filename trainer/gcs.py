"""Google Cloud Storage: the client, dataset download, and run directories in a bucket.

Only ``trainer.storage`` and the ``data push`` command import this module; nothing else in the
trainer knows about ``gs://``. TensorFlow's own ``gs://`` filesystem cannot be pointed at an
emulator, so all I/O goes through the ``google-cloud-storage`` client.

* ``client()``: one client per process. With ``STORAGE_EMULATOR_HOST`` set (fake-gcs-server in
  tests) it talks to the emulator anonymously; otherwise it uses Application Default Credentials
  (Workload Identity on GKE, or the key file named by ``GOOGLE_APPLICATION_CREDENTIALS``).
* ``download_prefix(uri, cache_dir)``: mirror a bucket prefix into a local cache on a thread pool,
  skipping objects already cached (same generation and size), refusing object names that would
  land outside the cache.
* ``push_dataset(src, uri)``: ``python -m trainer data push``, a built-in dataset or a folder
  uploaded in parallel (``upload_tree``).
* ``GCSRunDir``: a run directory written locally and made durable in the bucket.

Every call retries transient failures (429, 408, 5xx, connection resets) with exponential backoff
(``RETRY``: 1 s doubling up to 32 s, for at most 120 s). What is left becomes one of the trainer's
errors (see ``_errors``): missing credentials, rejected credentials and permission denied are a
``ConfigError`` (exit 2: a retry cannot fix IAM); a missing dataset bucket or an empty prefix is a
``DataError`` (exit 3); anything else that outlives the retries is a ``StorageError`` (exit 1, so
the Job retries it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import mimetypes
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path, PurePosixPath
from typing import TypeVar

import google.auth
import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exceptions
from google.cloud.storage.retry import DEFAULT_RETRY
from requests.adapters import HTTPAdapter

from trainer.errors import ConfigError, DataError, StorageError, TrainerError
from trainer.quoting import brief
from trainer.storage import GCS_SCHEME, RunDir

log = logging.getLogger(__name__)

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
EMULATOR_PROJECT = "test"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
DEFAULT_WORKERS = 16  # small objects are latency-bound: threads overlap the round trips
PROGRESS_EVERY_SECONDS = 5.0
RETRY = DEFAULT_RETRY.with_delay(initial=1.0, maximum=32.0, multiplier=2.0).with_timeout(120.0)
STAGING = ".staging"  # under the run prefix: trees being published (see GCSRunDir.publish)
FREE_SPACE_MARGIN = 0.95  # use at most this share of the free disk for the dataset cache

CREDENTIALS_HINT = (
    "on GKE bind the Job's Kubernetes service account to a Google service account "
    "(Workload Identity); elsewhere set GOOGLE_APPLICATION_CREDENTIALS to a key file or run "
    "`gcloud auth application-default login` (see docs/storage.md)"
)
PERMISSION_HINT = (
    "grant the service account roles/storage.objectViewer on the dataset bucket and "
    "roles/storage.objectAdmin on the output bucket (see docs/storage.md)"
)
NAME_MAX_BYTES = 255  # longest file name (one path segment) Linux filesystems store
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]\Z")
_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# URIs and object names


def parse_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b/`` -> ``("bucket", "a/b")``; ConfigError for anything malformed."""
    if not uri.startswith(GCS_SCHEME):
        raise ConfigError(f"{uri!r} is not a gs:// URI")
    bucket, _, prefix = uri[len(GCS_SCHEME):].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"{uri!r}: {bucket!r} is not a valid bucket name "
            "(3-222 characters: lowercase letters, digits, '-', '_', '.')"
        )
    prefix = prefix.rstrip("/")
    if prefix:
        try:
            check_relative(prefix)
        except ValueError as exc:
            raise ConfigError(f"{uri!r}: the path after the bucket {exc}") from None
    return bucket, prefix


def check_relative(name: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside whatever directory it is joined to.

    Raises ValueError (saying why) for an empty name, a leading ``/``, empty, ``.`` or ``..``
    segments, backslashes or NUL characters: an object named ``a/../../etc/x`` or ``/etc/x``
    must never be written outside the cache.
    """
    if not name:
        raise ValueError("is empty")
    if name.startswith("/"):
        raise ValueError("is absolute (starts with '/')")
    if "\\" in name or "\0" in name:
        raise ValueError("contains a backslash or NUL character")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"has a {part!r} segment" if part else "has an empty segment ('//')")
    return PurePosixPath(name)


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def _slug(bucket: str, prefix: str) -> str:
    """A directory name for one bucket prefix: readable, and unique per prefix."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{bucket}_{prefix}")[:80].strip("_")
    digest = hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:10]
    return f"{readable}-{digest}"


# ---------------------------------------------------------------------------------------------
# The client and error translation

_clients: dict[str, storage.Client] = {}
_clients_lock = threading.Lock()


def client() -> storage.Client:
    """The process's client for the current ``STORAGE_EMULATOR_HOST`` (created on first use)."""
    emulator = os.environ.get(EMULATOR_ENV, "")
    with _clients_lock:
        if emulator not in _clients:
            _clients[emulator] = _make_client(emulator)
        return _clients[emulator]


def _make_client(emulator: str) -> storage.Client:
    if emulator:
        credentials, project = AnonymousCredentials(), os.environ.get("GOOGLE_CLOUD_PROJECT", EMULATOR_PROJECT)
        log.info("using the storage emulator at %s", emulator)
    else:
        try:
            credentials, project = google.auth.default(scopes=[SCOPE])
        except auth_exceptions.DefaultCredentialsError as exc:
            raise ConfigError(f"no Google Cloud credentials ({_first_line(exc)}): {CREDENTIALS_HINT}") from None
    session = AuthorizedSession(credentials)
    # One pooled connection per worker thread (requests keeps only 10 per host by default).
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(32, DEFAULT_WORKERS * 2))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return storage.Client(project=project, credentials=credentials, _http=session)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@contextlib.contextmanager
def _errors(what: str, not_found: Callable[[], TrainerError] | None = None) -> Iterator[None]:
    """Turn client exceptions raised inside into the trainer's one-line errors.

    ``what`` says what was being done ("reading gs://b/p"); ``not_found`` builds the error for a
    404 (a missing bucket where only the bucket can be missing); without it a 404 is a
    StorageError (something vanished under us: a retry of the whole run may succeed).
    """
    try:
        yield
    except TrainerError:
        raise
    except api_exceptions.NotFound as exc:
        if not_found is not None:
            raise not_found() from None
        raise StorageError(f"{what}: not found ({_first_line(exc)})") from None
    except (api_exceptions.Unauthorized, auth_exceptions.RefreshError) as exc:
        raise ConfigError(f"{what}: credentials rejected ({_first_line(exc)}); {CREDENTIALS_HINT}") from None
    except auth_exceptions.DefaultCredentialsError as exc:
        raise ConfigError(f"{what}: no Google Cloud credentials ({_first_line(exc)}); {CREDENTIALS_HINT}") from None
    except api_exceptions.Forbidden as exc:
        raise ConfigError(f"{what}: permission denied ({_first_line(exc)}); {PERMISSION_HINT}") from None
    except (
        api_exceptions.GoogleAPICallError,
        api_exceptions.RetryError,
        auth_exceptions.TransportError,
        storage_exceptions.InvalidResponse,
        storage_exceptions.DataCorruption,
        requests.RequestException,
        ConnectionError,
        TimeoutError,
    ) as exc:
        raise StorageError(f"{what}: failed after retries: {_first_line(exc)}") from None


def _missing_bucket(bucket: str, uri: str, error: type[TrainerError], flag: str) -> Callable[[], TrainerError]:
    return lambda: error(
        f"bucket {bucket!r} does not exist ({flag} {uri}); check the name, or create it with "
        f"`gcloud storage buckets create gs://{bucket}`"
    )


# ---------------------------------------------------------------------------------------------
# Parallel transfers


def _parallel(
    fn: Callable[[_T], int], items: list[_T], workers: int, what: str, total_bytes: int
) -> None:
    """Run ``fn(item) -> bytes moved`` over ``items`` on a thread pool, logging progress.

    The first failure cancels what has not started and is re-raised.
    """
    if not items:
        return
    start = last = time.monotonic()
    done = moved = 0
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))), thread_name_prefix="gcs") as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            for future in as_completed(futures):
                moved += future.result()
                done += 1
                now = time.monotonic()
                finished = done == len(items)
                if now - last >= PROGRESS_EVERY_SECONDS or finished:
                    last = now
                    rate = done / max(now - start, 1e-6)
                    level = logging.INFO if not finished or len(items) >= 100 else logging.DEBUG
                    log.log(
                        level,
                        "%s: %d/%d objects, %s/%s, %.0f objects/s",
                        what, done, len(items), _size(moved), _size(total_bytes), rate,
                    )
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # unreachable


def _download(blob: storage.Blob, dest: Path) -> int:
    """Download ``blob`` to ``dest`` atomically (a temporary name, then rename); returns its size.

    The client verifies the checksum; a listed blob carries its generation, so exactly the
    listed version is fetched.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        blob.download_to_filename(str(tmp), retry=RETRY)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return blob.size if blob.size is not None else dest.stat().st_size


def _upload(bucket: storage.Bucket, path: Path, name: str, *, only_new: bool = False) -> int:
    """Upload one file to object ``name``; returns its size.

    Plain uploads overwrite and are retried unconditionally (the retry writes the same bytes);
    ``only_new`` makes the write conditional on the object not existing (``if_generation_match=0``).
    """
    blob = bucket.blob(name)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    blob.upload_from_filename(
        str(path), content_type=content_type, retry=RETRY, if_generation_match=0 if only_new else None
    )
    return path.stat().st_size


def _files_under(root: Path, skip_hidden: bool = False) -> list[str]:
    """Relative POSIX paths of the regular files under ``root`` (symlinks are not followed)."""
    out = []
    for dirpath, dirs, names in os.walk(root):
        if skip_hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            p = Path(dirpath) / n
            if (skip_hidden and n.startswith(".")) or not p.is_file() or p.is_symlink():
                continue
            out.append(p.relative_to(root).as_posix())
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# Datasets: download and upload


def download_prefix(uri: str, cache_dir: Path, workers: int = DEFAULT_WORKERS) -> Path:
    """A local directory mirroring every object under ``uri`` (a dataset), downloaded in parallel.

    The cache lives in ``cache_dir/gcs/<bucket_prefix-hash>/files``; a journal next to it records
    each object's generation and size, so a restarted run downloads only what changed, and files
    whose objects were deleted from the bucket are removed. Raises DataError for a missing bucket,
    an empty prefix or an object name that would escape the cache (``..``, ``/abs``, ``a//b``).
    """
    bucket_name, prefix = parse_uri(uri)
    list_prefix = f"{prefix}/" if prefix else ""
    root = Path(cache_dir) / "gcs" / _slug(bucket_name, prefix)
    files_dir, journal_path = root / "files", root / "objects.jsonl"

    with _errors(f"listing {uri}", _missing_bucket(bucket_name, uri, DataError, "--data")):
        blobs = [b for b in client().list_blobs(bucket_name, prefix=list_prefix, retry=RETRY)
                 if not b.name.endswith("/")]  # "folder" placeholders made by consoles
    if not blobs:
        raise DataError(
            f"no objects under {uri}: expected one folder per class, e.g. {uri.rstrip('/')}/cat/1.jpg "
            "(push one with `python -m trainer data push`)"
        )
    wanted = _validated(blobs, list_prefix, uri)

    cached = _read_journal(journal_path)
    todo = [(rel, b) for rel, b in wanted.items() if not _is_cached(files_dir / rel, cached.get(rel), b)]
    need = sum(b.size or 0 for _, b in todo)
    _check_free_space(root, need, uri)
    log.info(
        "dataset %s: %d objects (%s); %d already cached in %s, downloading %d (%s) with %d threads",
        uri, len(wanted), _size(sum(b.size or 0 for b in wanted.values())),
        len(wanted) - len(todo), files_dir, len(todo), _size(need), workers,
    )
    files_dir.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    with open(journal_path, "a", encoding="utf-8") as journal:

        inside = files_dir.resolve()

        def fetch(item: tuple[str, storage.Blob]) -> int:
            rel, blob = item
            dest = files_dir / rel
            if not dest.parent.resolve().is_relative_to(inside):  # a symlinked folder in the cache
                raise DataError(f"refusing to write {dest}: it resolves outside {files_dir}")
            size = _download(blob, dest)
            with lock:
                journal.write(json.dumps([rel, blob.generation, blob.size]) + "\n")
                journal.flush()
            return size

        what = f"downloading {uri}"
        with _errors(what, lambda: StorageError(f"{what}: an object was deleted or replaced during the download; run again")):
            _parallel(fetch, todo, workers, what, need)

    _prune(files_dir, set(wanted))
    tmp = journal_path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps([r, b.generation, b.size]) + "\n" for r, b in sorted(wanted.items())))
    os.replace(tmp, journal_path)
    return files_dir


def _validated(blobs: list[storage.Blob], list_prefix: str, uri: str) -> dict[str, storage.Blob]:
    """relative name -> blob; DataError naming the first unsafe or conflicting object name."""
    wanted: dict[str, storage.Blob] = {}
    bad: list[tuple[str, str]] = []
    for blob in blobs:
        rel = blob.name[len(list_prefix):]
        try:
            check_relative(rel)
        except ValueError as exc:
            bad.append((blob.name, str(exc)))
            continue
        wanted[rel] = blob
    if bad:
        name, reason = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"refusing to download {uri}: object name {name!r} {reason}{more}; object names must be "
            "relative paths without '.', '..' or empty segments"
        )
    too_long = sorted(b.name for rel, b in wanted.items()
                      if any(len(part.encode()) > NAME_MAX_BYTES for part in rel.split("/")))
    if too_long:
        more = f" (and {len(too_long) - 1} more)" if len(too_long) > 1 else ""
        raise DataError(
            f"refusing to download {uri}: object name {brief(too_long[0])}{more} has a path segment "
            f"longer than {NAME_MAX_BYTES} bytes, which no local filesystem can store; rename it")
    dirs = {str(parent) for rel in wanted for parent in PurePosixPath(rel).parents}
    clash = sorted(rel for rel in wanted if rel in dirs)
    if clash:
        raise DataError(
            f"refusing to download {uri}: {_join(list_prefix.rstrip('/'), clash[0])!r} is both an object "
            "and a folder of other objects"
        )
    return wanted


def _read_journal(path: Path) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            rel, generation, size = json.loads(line)
        except (ValueError, TypeError):
            continue  # a line cut short by a kill
        out[rel] = (generation, size)
    return out


def _is_cached(path: Path, journal_entry: tuple[int, int] | None, blob: storage.Blob) -> bool:
    if journal_entry != (blob.generation, blob.size):
        return False
    try:
        return path.stat().st_size == blob.size
    except OSError:
        return False


def _check_free_space(root: Path, need: int, uri: str) -> None:
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free * FREE_SPACE_MARGIN:
        raise ConfigError(
            f"dataset {uri} needs {_size(need)} more in the cache at {root} but only {_size(free)} is free; "
            "give the pod a larger cache volume"
        )


def _prune(files_dir: Path, keep: set[str]) -> None:
    """Delete files (and emptied folders) not in ``keep``: objects gone from the bucket, partials."""
    removed = 0
    for dirpath, dirs, names in os.walk(files_dir, topdown=False):
        for n in names:
            p = Path(dirpath) / n
            if p.relative_to(files_dir).as_posix() not in keep:
                p.unlink()
                removed += 1
        if Path(dirpath) != files_dir and not os.listdir(dirpath):
            os.rmdir(dirpath)
    if removed:
        log.info("removed %d cached files no longer in the bucket", removed)


def push_dataset(
    src: str, dst_uri: str, workers: int = DEFAULT_WORKERS, *, create_bucket: bool = False
) -> int:
    """``python -m trainer data push SRC DST``: upload a dataset; returns how many files it has.

    SRC is a built-in dataset (``builtin:digits``, written as PNG files in one folder per class)
    or a local directory in the class-folder layout. Files already in the bucket with the same
    content are skipped, so pushing again after an interruption sends only what is missing;
    hidden files and folders (``.DS_Store``, ``.git``) are not pushed. ``create_bucket`` creates
    a missing bucket first (meant for the emulator: a real bucket is usually created once, with
    its location and access policy, by an admin).
    """
    from trainer.config import BUILTIN_PREFIX

    if not dst_uri.startswith(GCS_SCHEME):
        raise ConfigError(f"data push: the destination must be gs://bucket/prefix, got {dst_uri!r}")
    parse_uri(dst_uri)  # a malformed destination fails before any work
    if workers < 1:
        raise ConfigError(f"data push: workers must be >= 1, got {workers}")
    if src.startswith(BUILTIN_PREFIX):
        from trainer.data import export_builtin

        with tempfile.TemporaryDirectory(prefix="kubetrain-push-") as tmp:
            count = export_builtin(src[len(BUILTIN_PREFIX):], Path(tmp))
            log.info("wrote %s as %d PNG files", src, count)
            return upload_tree(Path(tmp), dst_uri, workers, create_bucket=create_bucket)
    root = Path(src).expanduser()
    if not root.is_dir():
        raise DataError(f"data push: {src!r} is not a directory (expected one subfolder per class) "
                        f"nor a built-in dataset ({BUILTIN_PREFIX}digits)")
    return upload_tree(root, dst_uri, workers, create_bucket=create_bucket)


def upload_tree(
    root: Path, uri: str, workers: int = DEFAULT_WORKERS, *, create_bucket: bool = False
) -> int:
    """Upload every non-hidden file under ``root`` to ``uri``; returns how many files it holds.

    Objects already there with the same size and MD5 are not uploaded again; objects under ``uri``
    that are not in ``root`` are left alone (and counted in the log).
    """
    bucket_name, prefix = parse_uri(uri)
    files = _files_under(root, skip_hidden=True)
    if not files:
        raise DataError(f"nothing to push: {str(root)!r} holds no files")
    gcs = client()
    bucket = gcs.bucket(bucket_name)
    if create_bucket:
        with _errors(f"creating bucket gs://{bucket_name}"):
            if not bucket.exists(retry=RETRY):
                gcs.create_bucket(bucket_name, retry=RETRY)
                log.info("created bucket gs://%s", bucket_name)
    list_prefix = f"{prefix}/" if prefix else ""
    with _errors(f"listing {uri}", _missing_bucket(bucket_name, uri, ConfigError, "destination")):
        existing = {b.name[len(list_prefix):]: b for b in gcs.list_blobs(bucket_name, prefix=list_prefix, retry=RETRY)}
    todo = [rel for rel in files if not _same_content(root / rel, existing.get(rel))]
    extra = len(set(existing) - set(files))
    log.info(
        "pushing %s to %s: %d files, %d already there, uploading %d with %d threads%s",
        root, uri, len(files), len(files) - len(todo), len(todo), workers,
        f"; {extra} other objects under the prefix left in place" if extra else "",
    )
    what = f"uploading to {uri}"
    with _errors(what, _missing_bucket(bucket_name, uri, ConfigError, "destination")):
        _parallel(lambda rel: _upload(bucket, root / rel, _join(prefix, rel)), todo, workers, what,
                  sum((root / rel).stat().st_size for rel in todo))
    return len(files)


def _same_content(path: Path, blob: storage.Blob | None) -> bool:
    if blob is None or blob.size != path.stat().st_size or not blob.md5_hash:
        return False
    digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode() == blob.md5_hash


# ---------------------------------------------------------------------------------------------
# Run directories


class GCSRunDir(RunDir):
    """A run directory in a bucket: the trainer writes under ``local`` (in ``scratch``), and
    ``push`` / ``pull`` / ``publish`` move files between it and ``gs://bucket/prefix``.

    Opening checks that the bucket exists and is writable (a probe object is written and deleted),
    so a wrong bucket or missing permission fails before training, not after it, and finishes a
    ``publish`` that an earlier process was killed in the middle of (see ``publish``).
    """

    def __init__(self, uri: str, scratch: Path, workers: int = DEFAULT_WORKERS):
        self.bucket_name, self.prefix = parse_uri(uri)
        self.uri = f"{GCS_SCHEME}{_join(self.bucket_name, self.prefix)}"
        self.workers = workers
        self.local = Path(scratch) / "gcs-run" / _slug(self.bucket_name, self.prefix)
        self.local.mkdir(parents=True, exist_ok=True)
        self._bucket = client().bucket(self.bucket_name)
        self._check_writable()
        self._recover()

    def _name(self, rel: str) -> str:
        return _join(self.prefix, check_relative(rel).as_posix())

    def uri_of(self, rel: str) -> str:
        return f"{GCS_SCHEME}{self.bucket_name}/{self._name(rel)}"

    def _check_writable(self) -> None:
        probe = self._bucket.blob(self._name(f".write-probe-{uuid.uuid4().hex}"))
        with _errors(f"writing to {self.uri}", _missing_bucket(self.bucket_name, self.uri, ConfigError, "--output")):
            probe.upload_from_string(b"", retry=RETRY, if_generation_match=0)
            probe.delete(retry=RETRY)

    def _list(self, rel: str) -> list[storage.Blob]:
        """The objects under the folder ``rel``."""
        return list(client().list_blobs(self.bucket_name, prefix=self._name(rel) + "/", retry=RETRY))

    def push(self, rel: str) -> None:
        path = self.local / rel
        what = f"uploading {self.uri_of(rel)}"
        with _errors(what):
            if path.is_dir():
                files = _files_under(path)
                _parallel(lambda f: _upload(self._bucket, path / f, self._name(f"{rel}/{f}")),
                          files, self.workers, what, sum((path / f).stat().st_size for f in files))
            elif path.is_file():
                _upload(self._bucket, path, self._name(rel))
            else:
                raise FileNotFoundError(f"push: {path} does not exist")

    def pull(self, rel: str) -> bool:
        name = self._name(rel)
        what = f"downloading {self.uri_of(rel)}"
        with _errors(what):
            try:
                _download(self._bucket.blob(name), self.local / rel)
                return True
            except api_exceptions.NotFound:
                pass
            blobs = [b for b in self._list(rel) if not b.name.endswith("/")]
            if not blobs:
                return False
            wanted = _validated(blobs, name + "/", self.uri_of(rel))
            _parallel(lambda item: _download(item[1], self.local / rel / item[0]), list(wanted.items()),
                      self.workers, what, sum(b.size or 0 for b in blobs))
            return True

    def remove(self, rel: str) -> None:
        super().remove(rel)
        with _errors(f"deleting {self.uri_of(rel)}"):
            blobs = self._list(rel)
            try:
                self._bucket.delete_blob(self._name(rel), retry=RETRY)
            except api_exceptions.NotFound:
                pass
            self._delete(blobs)

    def _delete(self, blobs: Iterable[storage.Blob]) -> None:
        def delete(blob: storage.Blob) -> int:
            try:
                blob.delete(retry=RETRY)
            except api_exceptions.NotFound:
                pass  # already gone: deleting is idempotent
            return 0

        items = list(blobs)
        _parallel(delete, items, self.workers, f"deleting {len(items)} objects under {self.uri}", 0)

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
        files = _files_under(staging)
        what = f"publishing {self.uri_of(rel)}"
        with _errors(what):
            _parallel(lambda f: _upload(self._bucket, staging / f, self._name(f"{base}/files/{f}"), only_new=True),
                      files, self.workers, what, sum((staging / f).stat().st_size for f in files))
            manifest = {"rel": rel, "files": files}
            self._bucket.blob(self._name(f"{base}/manifest.json")).upload_from_string(
                json.dumps(manifest), content_type="application/json", retry=RETRY, if_generation_match=0)
            self._commit(token, manifest)
        super().publish(staging, rel)

    def _commit(self, token: str, manifest: dict) -> None:
        rel, files = manifest["rel"], manifest["files"]
        base = f"{STAGING}/{token}"
        new = set(files)

        def copy(f: str) -> int:
            src = self._bucket.blob(self._name(f"{base}/files/{f}"))
            self._bucket.copy_blob(src, self._bucket, self._name(f"{rel}/{f}"), retry=RETRY)
            return 0

        _parallel(copy, files, self.workers, f"committing {self.uri_of(rel)}", 0)
        prefix = self._name(rel) + "/"
        self._delete(b for b in self._list(rel) if b.name[len(prefix):] not in new)
        self._bucket.blob(self._name(f"{base}/manifest.json")).delete(retry=RETRY)
        self._delete(self._list(base))
        log.info("published %s (%d files)", self.uri_of(rel), len(files))

    def _recover(self) -> None:
        """Finish publishes whose manifest was written; drop staged trees that never got one."""
        with _errors(f"reading {self.uri_of(STAGING)}"):
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
                        data = json.loads(manifest.download_as_bytes(retry=RETRY))
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
