"""trainer.storage (client, transfers, dataset cache and push, GCS run directory) against a real
GCS emulator (fake-gcs-server) with the real client library."""

from __future__ import annotations

import json
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter

from trainer import storage
from trainer.core.errors import EXIT_CONFIG, EXIT_DATA, ConfigError, DataError
from trainer.storage import gcs, gcs_rundir, transfer
from trainer.storage.dataset_cache import download_prefix
from trainer.storage.uri import parse_uri

pytestmark = pytest.mark.gcs


def put(gcs_client, bucket: str, objects: dict[str, bytes], workers: int = 16) -> None:
    """Create objects directly with the client (names are not validated on this side)."""
    b = gcs_client.bucket(bucket)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda kv: b.blob(kv[0]).upload_from_string(kv[1]), objects.items()))


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def names(gcs_client, bucket: str, prefix: str = "") -> set[str]:
    return {b.name for b in gcs_client.list_blobs(bucket, prefix=prefix)}


# ---------------------------------------------------------------------------------------------
# Datasets


def test_download_mirrors_exactly_the_prefix(gcs_client, bucket, tmp_path):
    put(gcs_client, bucket, {
        "ds/cat/1.png": b"c1", "ds/cat/2.png": b"c2", "ds/dog/deep/3.png": b"d3",
        "ds/": b"",  # a console "folder" placeholder: ignored
        "ds2/cat/x.png": b"other dataset sharing the name's start",
        "dsx": b"neither",
    })
    got = storage.fetch_dataset(f"gs://{bucket}/ds", tmp_path / "cache")
    assert tree(got) == {"cat/1.png": b"c1", "cat/2.png": b"c2", "dog/deep/3.png": b"d3"}
    # a trailing slash names the same prefix and the same cache
    assert storage.fetch_dataset(f"gs://{bucket}/ds/", tmp_path / "cache") == got


def test_download_of_whole_bucket(gcs_client, bucket, tmp_path):
    put(gcs_client, bucket, {"a/1.png": b"1", "b/2.png": b"2"})
    assert tree(download_prefix(f"gs://{bucket}", tmp_path)) == {"a/1.png": b"1", "b/2.png": b"2"}


def test_parallel_download_of_1000_small_objects_then_nothing_to_redo(gcs_client, bucket, tmp_path, caplog):
    objects = {f"ds/c{i % 10}/{i:04d}.png": f"image {i}".encode() * 20 for i in range(1000)}
    put(gcs_client, bucket, objects)
    caplog.set_level(logging.INFO, logger="trainer.storage")
    got = download_prefix(f"gs://{bucket}/ds", tmp_path, workers=16)
    assert tree(got) == {k[len("ds/"):]: v for k, v in objects.items()}
    assert "downloading 1000" in caplog.text and "1000/1000 objects" in caplog.text  # progress

    mtimes = {p: p.stat().st_mtime_ns for p in got.rglob("*.png")}
    caplog.clear()
    assert download_prefix(f"gs://{bucket}/ds", tmp_path) == got
    assert "1000 already cached" in caplog.text and "downloading 0" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in got.rglob("*.png")} == mtimes


def test_cache_follows_changes_in_the_bucket(gcs_client, bucket, tmp_path):
    put(gcs_client, bucket, {"ds/a/1.png": b"old", "ds/a/2.png": b"keep", "ds/b/3.png": b"gone soon"})
    uri = f"gs://{bucket}/ds"
    download_prefix(uri, tmp_path)
    put(gcs_client, bucket, {"ds/a/1.png": b"new", "ds/c/4.png": b"added"})
    gcs_client.bucket(bucket).blob("ds/b/3.png").delete()
    assert tree(download_prefix(uri, tmp_path)) == {"a/1.png": b"new", "a/2.png": b"keep", "c/4.png": b"added"}


def test_interrupted_download_resumes(gcs_client, bucket, tmp_path):
    put(gcs_client, bucket, {f"ds/a/{i}.png": b"x" * i for i in range(1, 30)})
    uri = f"gs://{bucket}/ds"
    got = download_prefix(uri, tmp_path)
    journal = got.parent / "objects.jsonl"
    lines = journal.read_text().splitlines()
    # as if killed: half the journal, a torn last line, a leftover partial file
    journal.write_text("\n".join(lines[:10]) + '\n["a/9.png", 12')
    (got / "a" / ".10.png.part-deadbeef").write_bytes(b"partial")
    (got / "a" / "20.png").write_bytes(b"truncated")
    assert tree(download_prefix(uri, tmp_path)) == {f"a/{i}.png": b"x" * i for i in range(1, 30)}


@pytest.mark.parametrize("evil", ["ds/a/../../../evil.png", "ds/../evil.png", "ds//b.png", "ds/./c.png",
                                  "ds/a\\..\\..\\evil.png"],
                         ids=["dotdot-deep", "dotdot", "empty-segment", "dot", "backslash"])
def test_unsafe_object_names_are_refused(gcs_client, bucket, tmp_path, evil):
    put(gcs_client, bucket, {"ds/a/ok.png": b"ok", evil: b"pwned"})
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(DataError, match="refusing to download") as err:
        storage.fetch_dataset(f"gs://{bucket}/ds", cache)
    assert repr(evil) in str(err.value) and err.value.exit_code == EXIT_DATA
    assert not any(p.name.endswith("evil.png") or p.read_bytes() == b"pwned"
                   for p in tmp_path.rglob("*") if p.is_file())


def test_absolute_object_name_is_refused(gcs_client, bucket, tmp_path):
    put(gcs_client, bucket, {"a/ok.png": b"ok", "/tmp/abs.png": b"pwned"})
    with pytest.raises(DataError, match="is absolute"):
        download_prefix(f"gs://{bucket}", tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_object_that_is_also_a_folder_is_refused(gcs_client, bucket, tmp_path):
    put(gcs_client, bucket, {"ds/a": b"file", "ds/a/1.png": b"inside"})
    with pytest.raises(DataError, match="both an object and a folder"):
        download_prefix(f"gs://{bucket}/ds", tmp_path)


def test_missing_bucket_is_a_data_error(gcs_emulator, tmp_path):
    with pytest.raises(DataError, match="bucket 'no-such-bucket-kt' does not exist") as err:
        storage.fetch_dataset("gs://no-such-bucket-kt/digits", tmp_path)
    assert err.value.exit_code == EXIT_DATA
    assert "\n" not in str(err.value)


def test_empty_prefix_is_a_data_error(gcs_client, bucket, tmp_path):
    put(gcs_client, bucket, {"other/a/1.png": b"1"})
    with pytest.raises(DataError, match="no objects under") as err:
        storage.fetch_dataset(f"gs://{bucket}/digits", tmp_path)
    assert err.value.exit_code == EXIT_DATA


# ---------------------------------------------------------------------------------------------
# Run directories


def test_run_dir_round_trips_files_and_trees(gcs_client, bucket, tmp_path):
    uri = f"gs://{bucket}/runs/r1"
    rd = storage.open_run_dir(uri, tmp_path / "scratch1")
    assert isinstance(rd, gcs_rundir.GCSRunDir) and rd.uri_of("report/metrics.json") == f"{uri}/report/metrics.json"
    (rd.local / "checkpoints").mkdir()
    (rd.local / "checkpoints" / "ckpt-1.index").write_bytes(b"index")
    (rd.local / "config.yaml").write_text("epochs: 2\n")
    (rd.local / "model" / "assets").mkdir(parents=True)
    (rd.local / "model" / "saved_model.pb").write_bytes(b"\x00" * 5000)
    (rd.local / "model" / "assets" / "classes.txt").write_text("0\n1\n")
    for rel in ("checkpoints/ckpt-1.index", "config.yaml", "model"):
        rd.push(rel)
    assert names(gcs_client, bucket) == {
        "runs/r1/checkpoints/ckpt-1.index", "runs/r1/config.yaml",
        "runs/r1/model/saved_model.pb", "runs/r1/model/assets/classes.txt",
    }
    blob = gcs_client.bucket(bucket).get_blob("runs/r1/config.yaml")
    assert blob.content_type == "application/yaml" or blob.content_type.startswith(("text/", "application/"))

    other = storage.open_run_dir(uri + "/", tmp_path / "scratch2")  # e.g. the restarted pod
    assert other.local != rd.local
    assert other.pull("checkpoints/ckpt-1.index") and other.pull("model") and other.pull("config.yaml")
    assert tree(other.local) == tree(rd.local)
    assert not other.pull("checkpoints/latest.json")
    assert not other.pull("nothing/here")

    # overwrite, then remove a file and a tree
    (rd.local / "config.yaml").write_text("epochs: 3\n")
    rd.push("config.yaml")
    assert other.pull("config.yaml") and (other.local / "config.yaml").read_text() == "epochs: 3\n"
    rd.remove("model")
    rd.remove("checkpoints/ckpt-1.index")
    rd.remove("never/existed")
    assert names(gcs_client, bucket) == {"runs/r1/config.yaml"}
    assert not (rd.local / "model").exists()


def test_run_dir_rejects_relative_names_that_escape(gcs_client, bucket, tmp_path):
    rd = storage.open_run_dir(f"gs://{bucket}/run", tmp_path)
    with pytest.raises(ValueError):
        rd.uri_of("../other-run/x")


def test_missing_output_bucket_is_a_config_error(gcs_emulator, tmp_path):
    with pytest.raises(ConfigError, match="bucket 'no-such-output-kt' does not exist") as err:
        storage.open_run_dir("gs://no-such-output-kt/runs/1", tmp_path)
    assert err.value.exit_code == EXIT_CONFIG


@pytest.mark.parametrize("uri", ["gs://", "gs://Upper/x", "gs://ab", "gs://b-ok/a/../x", "gs://b-ok/a//x"],
                         ids=["no-bucket", "uppercase", "short", "dotdot", "empty-segment"])
def test_malformed_uris_are_config_errors(uri):
    with pytest.raises(ConfigError):
        parse_uri(uri)


def test_no_credentials_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    with pytest.raises(ConfigError, match="no Google Cloud credentials") as err:
        storage.open_run_dir("gs://some-bucket/run", tmp_path)
    assert err.value.exit_code == EXIT_CONFIG and "\n" not in str(err.value)


def _report(root: Path, version: str, files: tuple[str, ...]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(f"{version} {f}")
    return root


def test_publish_replaces_the_tree_and_leaves_no_staging(gcs_client, bucket, tmp_path):
    rd = storage.open_run_dir(f"gs://{bucket}/run", tmp_path)
    rd.publish(_report(rd.staging("report"), "v1", ("metrics.json", "old_only.png", "sub/a.txt")), "report")
    rd.publish(_report(rd.staging("report"), "v2", ("metrics.json", "sub/a.txt", "report.html")), "report")
    assert names(gcs_client, bucket) == {"run/report/metrics.json", "run/report/sub/a.txt", "run/report/report.html"}
    b = gcs_client.bucket(bucket)
    assert b.blob("run/report/metrics.json").download_as_text() == "v2 metrics.json"
    assert tree(rd.local / "report") == {f: f"v2 {f}".encode() for f in ("metrics.json", "sub/a.txt", "report.html")}


def test_failed_publish_leaves_the_previous_report(gcs_client, bucket, tmp_path, monkeypatch):
    rd = storage.open_run_dir(f"gs://{bucket}/run", tmp_path / "s1")
    rd.publish(_report(rd.staging("report"), "good", ("metrics.json", "a.png", "b.png")), "report")

    real_upload, calls = transfer.upload, []

    def dying_upload(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is killed half-way through the upload
        return real_upload(*args, **kwargs)

    monkeypatch.setattr(transfer, "upload", dying_upload)
    with pytest.raises(KeyboardInterrupt):
        rd.publish(_report(rd.staging("report"), "bad", ("metrics.json", "a.png", "b.png")), "report")
    monkeypatch.undo()
    b = gcs_client.bucket(bucket)
    assert {n: b.blob(n).download_as_text() for n in names(gcs_client, bucket, "run/report/")} == {
        f"run/report/{f}": f"good {f}" for f in ("metrics.json", "a.png", "b.png")}

    storage.open_run_dir(f"gs://{bucket}/run", tmp_path / "s2")  # the next run cleans up
    assert names(gcs_client, bucket, "run/.staging/") == set()
    assert len(names(gcs_client, bucket, "run/report/")) == 3


def test_publish_killed_while_committing_is_finished_by_the_next_run(gcs_client, bucket, tmp_path, monkeypatch):
    rd = storage.open_run_dir(f"gs://{bucket}/run", tmp_path / "s1")
    rd.publish(_report(rd.staging("model"), "v1", ("saved_model.pb", "variables/v.data", "stale.txt")), "model")

    def killed_commit(self, token, manifest):
        src = self._bucket.blob(self._name(f"{gcs_rundir.STAGING}/{token}/files/{manifest['files'][0]}"))
        self._bucket.copy_blob(src, self._bucket, self._name(f"model/{manifest['files'][0]}"))
        raise KeyboardInterrupt  # killed after the first server-side copy

    monkeypatch.setattr(gcs_rundir.GCSRunDir, "_commit", killed_commit)
    with pytest.raises(KeyboardInterrupt):
        rd.publish(_report(rd.staging("model"), "v2", ("saved_model.pb", "variables/v.data")), "model")
    monkeypatch.undo()

    storage.open_run_dir(f"gs://{bucket}/run", tmp_path / "s2")  # restarted: rolls forward
    b = gcs_client.bucket(bucket)
    assert {n: b.blob(n).download_as_text() for n in names(gcs_client, bucket, "run/")} == {
        "run/model/saved_model.pb": "v2 saved_model.pb", "run/model/variables/v.data": "v2 variables/v.data"}


class FlakyAdapter(HTTPAdapter):
    """Answers the first ``failures`` requests with ``status`` (503: an overloaded GCS frontend)."""

    def __init__(self, failures: int, status: int = 503, **kw):
        super().__init__(**kw)
        self.failures, self.status, self.sent = failures, status, 0

    def send(self, request, **kw):
        self.sent += 1
        if self.sent <= self.failures:
            resp = requests.Response()
            resp.status_code, resp.request, resp.url = self.status, request, request.url
            resp._content = json.dumps({"error": {"code": self.status, "message": "injected"}}).encode()
            resp.headers["Content-Type"] = "application/json"
            return resp
        return super().send(request, **kw)


def test_transient_errors_are_retried(gcs_client, bucket, tmp_path, monkeypatch):
    rd = storage.open_run_dir(f"gs://{bucket}/run", tmp_path)
    flaky = FlakyAdapter(failures=2)
    monkeypatch.setattr(gcs, "RETRY", gcs.RETRY.with_delay(initial=0.05, maximum=0.2))
    monkeypatch.setitem(gcs_client._http.adapters, "http://", flaky)
    (rd.local / "checkpoints").mkdir()
    (rd.local / "checkpoints" / "latest.json").write_text('{"epoch": 1}')
    rd.push("checkpoints/latest.json")
    monkeypatch.undo()
    assert flaky.sent == 3
    assert gcs_client.bucket(bucket).blob("run/checkpoints/latest.json").download_as_text() == '{"epoch": 1}'


@pytest.mark.parametrize(("status", "message"), [(403, "permission denied"), (401, "credentials rejected")],
                         ids=["forbidden", "unauthorized"])
def test_iam_refusals_are_config_errors(gcs_client, bucket, tmp_path, monkeypatch, status, message):
    """The emulator has no IAM: the refusal GCS would send is injected at the HTTP layer."""
    from google.auth.transport.requests import AuthorizedSession
    from google.cloud import storage as gcs_storage
    from google.oauth2.credentials import Credentials

    # an expired OAuth token that cannot be refreshed, like a revoked key
    creds = Credentials(token="expired")
    session = AuthorizedSession(creds)
    session.mount("http://", FlakyAdapter(failures=100, status=status))
    client = gcs_storage.Client(project="test", credentials=creds, _http=session)
    monkeypatch.setitem(gcs._clients, os.environ["STORAGE_EMULATOR_HOST"], client)
    with pytest.raises(ConfigError, match=message) as err:
        storage.fetch_dataset(f"gs://{bucket}/ds", tmp_path)
    assert err.value.exit_code == EXIT_CONFIG and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=message):
        storage.open_run_dir(f"gs://{bucket}/run", tmp_path)


# ---------------------------------------------------------------------------------------------
# data push


def test_push_local_folder_then_train_layout_comes_back(gcs_client, bucket, tmp_path):
    from trainer.data.push import push_dataset

    src = tmp_path / "src"
    for cls, n in (("cat", 3), ("dog", 2)):
        (src / cls).mkdir(parents=True)
        for i in range(n):
            (src / cls / f"{i}.png").write_bytes(f"{cls}{i}".encode())
    (src / ".DS_Store").write_bytes(b"junk")
    assert push_dataset(str(src), f"gs://{bucket}/pets") == 5
    assert names(gcs_client, bucket) == {f"pets/cat/{i}.png" for i in range(3)} | {"pets/dog/0.png", "pets/dog/1.png"}
    assert tree(storage.fetch_dataset(f"gs://{bucket}/pets", tmp_path / "cache")) == {
        k: v for k, v in tree(src).items() if k != ".DS_Store"}

    gen = gcs_client.bucket(bucket).get_blob("pets/cat/0.png").generation
    (src / "cat" / "1.png").write_bytes(b"changed")
    assert push_dataset(str(src), f"gs://{bucket}/pets") == 5
    assert gcs_client.bucket(bucket).get_blob("pets/cat/0.png").generation == gen  # unchanged: skipped
    assert gcs_client.bucket(bucket).blob("pets/cat/1.png").download_as_bytes() == b"changed"


def test_push_builtin_digits(gcs_client, tmp_path):
    from trainer.data.push import push_dataset

    bucket = f"t-push-digits-{uuid.uuid4().hex[:8]}"
    assert push_dataset("builtin:digits", f"gs://{bucket}/digits", create_bucket=True) == 1797
    pushed = [b.name for b in gcs_client.list_blobs(bucket, prefix="digits/")]
    assert len(pushed) == 1797 and all(n.endswith(".png") for n in pushed)
    assert {n.split("/")[1] for n in pushed} == {str(d) for d in range(10)}


def test_push_errors(gcs_emulator, tmp_path):
    from trainer.data.push import push_dataset

    with pytest.raises(ConfigError, match="destination must be gs://"):
        push_dataset("builtin:digits", str(tmp_path / "out"))
    with pytest.raises(DataError, match="not a directory"):
        push_dataset(str(tmp_path / "nope"), "gs://some-bucket/x")
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "1.png").write_bytes(b"1")
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket-kt' does not exist"):
        push_dataset(str(tmp_path / "d"), "gs://no-such-bucket-kt/x")
