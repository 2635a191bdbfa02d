"""Google Cloud Storage: the client, its retry policy, and the translation of its errors.

TensorFlow's own ``gs://`` filesystem cannot be pointed at an emulator, so all bucket I/O goes
through the ``google-cloud-storage`` client (imported only by the modules of this package
that a ``gs://`` URI reaches, never by ``import trainer.storage``).

* ``client()``: one client per process. With ``STORAGE_EMULATOR_HOST`` set (fake-gcs-server in
  tests) it talks to the emulator anonymously; otherwise it uses Application Default Credentials
  (Workload Identity on GKE, or the key file named by ``GOOGLE_APPLICATION_CREDENTIALS``).
* ``RETRY``: every call retries transient failures (429, 408, 5xx, connection resets) with
  exponential backoff, 1 s doubling up to 32 s, for at most 120 s; each request times out after
  60 s (a stall is a retried failure). Every retry is counted (``retries()``).
* ``errors(what)``: what outlives the retries becomes one of the trainer's errors: missing
  credentials, rejected credentials and permission denied are a ``ConfigError`` (exit 2: a
  retry cannot fix IAM); a missing dataset bucket or an empty prefix is a ``DataError`` (exit
  3); anything else is a ``StorageError`` (exit 1, so the Job retries it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator

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

from trainer.core.errors import ConfigError, StorageError, TrainerError

log = logging.getLogger(__name__)

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
EMULATOR_PROJECT = "test"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
DEFAULT_WORKERS = 16  # small objects are latency-bound: threads overlap the round trips



def _seconds_from_env(name: str, default: float) -> float:
    """A positive number of seconds from the environment (tests shorten the bounds)."""
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if 0 < value < 1e6 else default


# The bounds of waiting on storage (docs/reliability.md, "Storage faults"):
RETRY_SECONDS = _seconds_from_env("KUBETRAIN_STORAGE_RETRY_SECONDS", 120.0)  # one call's retries
REQUEST_TIMEOUT_SECONDS = _seconds_from_env("KUBETRAIN_STORAGE_TIMEOUT_SECONDS", 60.0)  # one request
OUTAGE_SECONDS = _seconds_from_env("KUBETRAIN_STORAGE_OUTAGE_SECONDS", 300.0)  # then the run ends

_retries = 0
_retries_lock = threading.Lock()


def _count_retry(exc: Exception) -> None:
    global _retries
    with _retries_lock:
        _retries += 1
    log.info("storage: retrying after %s", _first_line(exc))


def retries() -> int:
    """Transient storage failures retried so far in this process (``storage_retries`` in
    metrics.json)."""
    return _retries


RETRY = DEFAULT_RETRY.with_delay(initial=1.0, maximum=32.0, multiplier=2.0).with_timeout(RETRY_SECONDS)
RETRY._on_error = _count_retry  # api_core's Retry has no with_on_error(); every copy above keeps it
NotFound = api_exceptions.NotFound
PreconditionFailed = api_exceptions.PreconditionFailed  # a conditional write or delete lost

CREDENTIALS_HINT = (
    "on GKE bind the Job's Kubernetes service account to a Google service account "
    "(Workload Identity); elsewhere set GOOGLE_APPLICATION_CREDENTIALS to a key file or run "
    "`gcloud auth application-default login` (see docs/storage.md)"
)
PERMISSION_HINT = (
    "grant the service account roles/storage.objectViewer on the dataset bucket and "
    "roles/storage.objectAdmin on the output bucket (see docs/storage.md)"
)

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
    session = _BoundedSession(credentials)
    # One pooled connection per worker thread (requests keeps only 10 per host by default).
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(32, DEFAULT_WORKERS * 2))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return storage.Client(project=project, credentials=credentials, _http=session)


class _BoundedSession(AuthorizedSession):
    """Every request times out after ``REQUEST_TIMEOUT_SECONDS`` (connect and between bytes):
    a stalled connection becomes a retried error, never a hang."""

    def request(self, method, url, data=None, headers=None, max_allowed_time=None, timeout=None, **kwargs):
        bound = REQUEST_TIMEOUT_SECONDS
        if isinstance(timeout, tuple):
            timeout = tuple(bound if t is None else min(t, bound) for t in timeout)
        else:
            timeout = bound if timeout is None else min(timeout, bound)
        return super().request(method, url, data=data, headers=headers,
                               max_allowed_time=max_allowed_time, timeout=timeout, **kwargs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@contextlib.contextmanager
def errors(what: str, not_found: Callable[[], TrainerError] | None = None) -> Iterator[None]:
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
    except OSError as exc:  # after the network errors above, which are OSErrors too
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A volume can fill by blocks long before by bytes (many small files), so the free space
        # checked before a download is no promise: a full disk is one line, not a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        raise ConfigError(f"{what}: no space left on the local disk{where}; give the pod more "
                          "scratch space (the spec's scratch_size, the emptyDir behind "
                          "KUBETRAIN_SCRATCH), or pack the dataset (`python -m trainer data pack`: "
                          "streamed through a bounded window)") from None


def missing_bucket(bucket: str, uri: str, error: type[TrainerError], flag: str) -> Callable[[], TrainerError]:
    return lambda: error(
        f"bucket {bucket!r} does not exist ({flag} {uri}); check the name, or create it with "
        f"`gcloud storage buckets create gs://{bucket}`"
    )
