"""Pure helpers of the test kubelet and the control plane (no cluster needed)."""

from pathlib import Path

import controlplane
import pytest
from kubelet_volumes import expand_references, rewrite_paths

MOUNTS = [("/var/run/kubetrain", Path("/tmp/pod/volumes/cfg")), ("/tmp", Path("/tmp/pod/tmp"))]


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("--epochs=$(EPOCHS)", {"EPOCHS": "3"}, "--epochs=3"),
        ("$(UNKNOWN)", {}, "$(UNKNOWN)"),
        ("$$(EPOCHS)", {"EPOCHS": "3"}, "$(EPOCHS)"),
        ("a$(X)b$(Y)", {"X": "1", "Y": "2"}, "a1b2"),
    ],
    ids=["known", "unknown-kept", "escaped", "two"],
)
def test_expand_references(value, env, expected):
    assert expand_references(value, env) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/var/run/kubetrain/config.yaml", "/tmp/pod/volumes/cfg/config.yaml"),
        ("--config=/var/run/kubetrain/config.yaml", "--config=/tmp/pod/volumes/cfg/config.yaml"),
        ("/tmp", "/tmp/pod/tmp"),
        ("/tmpfoo", "/tmpfoo"),
        ("gs://bucket/tmp", "gs://bucket/tmp"),
        ("--epochs=3", "--epochs=3"),
    ],
    ids=["path", "flag-value", "mount-itself", "prefix-not-a-dir", "uri", "unrelated"],
)
def test_rewrite_paths(value, expected):
    assert rewrite_paths(value, MOUNTS) == expected


def test_pinned_versions_match_the_cache_key(monkeypatch):
    monkeypatch.delenv("KUBETRAIN_K8S_BIN", raising=False)
    binaries = controlplane.Binaries.default()
    version = controlplane.kubernetes_version()
    assert version.startswith("v1.")
    assert f"k8s-{version}_etcd-{controlplane.etcd_version()}" in str(binaries.etcd)


def test_decode_proc_net_addresses():
    assert controlplane._decode_address("0100007F", 8) == "127.0.0.1"
    assert controlplane._decode_address("00000000", 8) == "0.0.0.0"
    assert controlplane._decode_address("0000000000000000FFFF00000100007F", 32) == "127.0.0.1"
    assert controlplane._decode_address("00000000000000000000000001000000", 32) == "::1"


def test_pod_addresses_map_to_loopback_ports():
    from kubelet_volumes import map_pod_addresses

    ports = {}
    port_of = lambda host, port: ports.setdefault((host, port), 40000 + len(ports))
    value = "mw-0.mw:2222,mw-1.mw.ns.svc.cluster.local:2222,other-0.other:2222,mw-0.mw:2222"
    assert map_pod_addresses(value, "ns", "mw", port_of) == \
        "127.0.0.1:40000,127.0.0.1:40001,other-0.other:2222,127.0.0.1:40000"
