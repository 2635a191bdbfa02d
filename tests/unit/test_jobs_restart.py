"""An API server that goes away and comes back (#22), on the fake Cluster and on the real
Cluster's retry: reads retry within a bound (30 s before the first answer, 5 min after), a
watch cut by the outage makes ``wait`` read the Job again (never a guess), and a cut log
stream continues after its last printed line: nothing repeated, nothing lost. The same against
a real kube-apiserver restart: tests/cluster/test_cluster_restart.py."""

from __future__ import annotations

from unittest import mock

import pytest
from test_jobs_follow import NS, FakeCluster, terminated
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from jobs import follow, logs
from jobs.cluster import FIRST_CONTACT_SECONDS, OUTAGE_SECONDS, Cluster, Unreachable


class FlakyCluster(FakeCluster):
    """A FakeCluster whose log stream of a pod breaks after ``cut_after`` lines, once each time
    it is listed in ``cuts``, and whose watches fail while ``down`` is set."""

    def __init__(self):
        super().__init__()
        self.cuts: list[int] = []
        self.down = 0  # watch calls that fail before the API server is back
        self.outages = 0

    def wait_out(self, exc):
        self.outages += 1
        self.seconds += 1

    def logs(self, namespace, pod, container, follow=False, **opts):
        lines = self.logs_of.get(pod, [])
        if follow and self.cuts:
            cut = self.cuts.pop(0)
            yield from lines[:cut]
            raise Unreachable(f"logs of pod {namespace}/{pod}: cannot reach the API server: "
                              "[Errno 111] Connection refused")
        yield from super().logs(namespace, pod, container, follow, **opts)

    def watch(self, kind, namespace, **kw):
        if self.down:
            self.down -= 1
            raise Unreachable("watch jobs: cannot reach the API server: [Errno 111] Connection refused")
        yield from super().watch(kind, namespace, **kw)


def test_a_cut_log_stream_continues_after_its_last_line():
    c = FlakyCluster()
    c.job(active=1, ready=1)
    c.pod("digits-a")
    c.logs_of = {"digits-a": [f"line {i}" for i in range(10)]}
    c.cuts = [3, 3, 7]  # cut three times: twice at the same place, once further on
    c.after_logs = {"digits-a": lambda c: (c.pod("digits-a", phase="Succeeded", **terminated(0)),
                                           c.job(conditions=[("Complete", "", "")]))}
    reports = []
    lines = list(logs.stream_logs(c, NS, "digits", follow=True, all_pods=False, report=reports.append))
    assert lines == [f"line {i}" for i in range(10)]
    assert c.outages == 3
    assert reports[-1] == "job digits: Succeeded"


def test_a_log_stream_that_ends_while_the_container_runs_is_opened_again():
    c = FlakyCluster()
    c.job(active=1, ready=1)
    c.pod("digits-a")
    c.logs_of = {"digits-a": ["one", "two"]}

    def more(c):  # the first stream ended early (the API server closed it); the log goes on
        c.logs_of["digits-a"] += ["three"]
        c.after_logs["digits-a"] = lambda c: (c.pod("digits-a", phase="Succeeded", **terminated(0)),
                                              c.job(conditions=[("Complete", "", "")]))

    c.after_logs = {"digits-a": more}
    assert list(logs.stream_logs(c, NS, "digits", follow=True, all_pods=False)) == ["one", "two", "three"]


def test_tail_is_counted_once_and_survives_a_cut():
    c = FlakyCluster()
    c.job(active=1, ready=1)
    c.pod("digits-a")
    c.logs_of = {"digits-a": [f"line {i}" for i in range(10)]}
    c.cuts = [8]
    c.after_logs = {"digits-a": lambda c: (c.pod("digits-a", phase="Succeeded", **terminated(0)),
                                           c.job(conditions=[("Complete", "", "")]))}
    lines = list(logs.stream_logs(c, NS, "digits", follow=True, all_pods=False, tail_lines=4))
    assert lines == [f"line {i}" for i in range(6, 10)]


@pytest.mark.parametrize("outcome, code", [("Complete", 0), ("Failed", 1)])
def test_wait_through_an_outage_ends_with_the_jobs_own_state(outcome, code):
    c = FlakyCluster()
    c.job(active=1, ready=1)
    c.pod("digits-a")
    c.down = 3
    c.steps = [lambda c: c.job(conditions=[(outcome, "BackoffLimitExceeded" if code else "", "")])]
    result, message, _ = _wait(c)
    assert result == code and c.outages == 3
    assert ("succeeded" in message) == (code == 0)


def _wait(c):
    lines = []
    code, message = follow.wait(c, NS, "digits", timeout_seconds=3600, pending_timeout_seconds=600,
                                report=lines.append, clock=c.clock, now=c.now)
    return code, message, lines


# ----------------------------------------------------------------------------- the real Cluster


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


def _refused():
    return MaxRetryError(None, "/apis/batch/v1/namespaces/ml/jobs/digits",
                         NewConnectionError(None, "Failed to establish a new connection: [Errno 111] "
                                                  "Connection refused"))


class Response:
    data = b'{"kind": "Job", "metadata": {"name": "digits"}}'


def _cluster(clock, notes):
    return Cluster(core=mock.Mock(), batch=None, default_namespace=NS, host="https://127.0.0.1:1",
                   notify=notes.append, clock=clock, sleep=clock.sleep)


def test_reads_retry_an_outage_then_answer():
    clock, notes = Clock(), []
    cluster = _cluster(clock, notes)
    answers = iter([Response(), _refused(), _refused(), ProtocolError("Connection reset by peer"),
                    Response()])

    def read(*args, **kwargs):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cluster.batch = mock.Mock(read_namespaced_job=read)
    assert cluster.get("Job", NS, "digits")["metadata"]["name"] == "digits"
    assert cluster.get("Job", NS, "digits")["metadata"]["name"] == "digits"
    assert notes[0].startswith("warning: job ml/digits: cannot reach the API server: "
                               "[Errno 111] Connection refused; retrying for up to 300s")
    assert notes[-1].startswith("API server reachable again after")
    assert 0 < clock.now < 10


@pytest.mark.parametrize("answered_before, bound", [(False, FIRST_CONTACT_SECONDS), (True, OUTAGE_SECONDS)])
def test_an_outage_longer_than_the_bound_is_one_error(answered_before, bound):
    clock, notes = Clock(), []
    cluster = _cluster(clock, notes)
    calls = {"n": 0}

    def read(*args, **kwargs):
        calls["n"] += 1
        if answered_before and calls["n"] == 1:
            return Response()
        raise _refused()

    cluster.batch = mock.Mock(read_namespaced_job=read)
    if answered_before:
        cluster.get("Job", NS, "digits")
    with pytest.raises(Unreachable, match=r"Connection refused \(unreachable for \d+s; gave up\)") as caught:
        cluster.get("Job", NS, "digits")
    assert bound <= clock.now <= bound + 1
    assert "\n" not in str(caught.value) and "0x" not in str(caught.value)
