"""``jobs status`` text (a few lines on a Job or CronJob and its pods or runs) and the plain
listing rows, from the state helpers in ``jobs.follow``."""

from __future__ import annotations

from jobs.cluster import Cluster, NotFound
from jobs.follow import (
    _ago,
    _cron_runs,
    _workers_text,
    age,
    exit_summary,
    explain_failure,
    job_state,
    pod_problem,
    pod_selector,
    sorted_pods,
    worker_index,
    worker_phases,
)
from jobs.render import MANAGED_BY


def status_text(cluster: Cluster, namespace: str, name: str) -> str:
    """A few lines on the Job or CronJob ``name`` and its pods or runs."""
    try:
        job = cluster.get("Job", namespace, name)
    except NotFound:
        job = None
    if job is not None:
        state = job_state(job)
        st = job.get("status") or {}
        lines = [f"job {name} (namespace {namespace}): {state.phase}"
                 + (f" - {state.reason}" if state.reason else "")
                 + (f": {state.message}" if state.message else ""),
                 (f"  created {age(job['metadata'].get('creationTimestamp'))} ago; "
                  f"pods active {st.get('active', 0)}, succeeded {st.get('succeeded', 0)}, "
                  f"failed {st.get('failed', 0)} (backoffLimit {job['spec'].get('backoffLimit')})")]
        args = job["spec"]["template"]["spec"]["containers"][0].get("args") or []
        if "--output" in args:
            # a CronJob's run: the kubelet expands $(KUBETRAIN_JOB_NAME) to the Job's name
            output = args[args.index("--output") + 1].replace("$(KUBETRAIN_JOB_NAME)", name)
            lines.append(f"  output {output}")
        pods = sorted_pods(cluster.list("Pod", namespace, pod_selector(name))["items"])
        phases = worker_phases(pods)
        if phases:
            lines.append(f"  {len(phases)} of {job['spec'].get('completions')} {_workers_text(phases)}"
                         f" (service {job['spec']['template']['spec'].get('subdomain', '-')})")
        for pod in pods:
            phase = (pod.get("status") or {}).get("phase", "Pending")
            problem = pod_problem(pod)
            detail = exit_summary(pod) or (f"{problem[0]}: {problem[1]}" if problem else "")
            node = (pod.get("spec") or {}).get("nodeName")
            index = worker_index(pod)
            lines.append(f"  pod {pod['metadata']['name']}"
                         + (f"  worker {index}" if index is not None else "")
                         + f"  {phase}  {age(pod['metadata'].get('creationTimestamp'))}"
                         + (f"  node {node}" if node else "") + (f"  {detail}" if detail else ""))
        if state.phase == "Failed":
            lines.append(explain_failure(job, pods))
        return "\n".join(lines)
    try:
        cron = cluster.get("CronJob", namespace, name)
    except NotFound:
        raise NotFound(f"no job or cronjob named {name!r} in namespace {namespace!r} "
                       f"(python -m jobs list -n {namespace})") from None
    spec, st = cron["spec"], cron.get("status") or {}
    lines = [f"cronjob {name} (namespace {namespace}): schedule {spec['schedule']!r} "
             f"({spec.get('timeZone', 'controller local time')})"
             + (", suspended" if spec.get("suspend") else ""),
             (f"  last run {_ago(st.get('lastScheduleTime'))}, last success "
              f"{_ago(st.get('lastSuccessfulTime'))}, active {len(st.get('active') or [])}")]
    for run in _cron_runs(cluster, namespace, cron):
        lines.append(f"  run {run['metadata']['name']}  {job_state(run).phase}  "
                     f"{age(run['metadata'].get('creationTimestamp'))}")
    return "\n".join(lines)


def list_rows(cluster: Cluster, namespace: str) -> list[list[str]]:
    """[KIND, NAME, STATE, AGE, SCHEDULE] for everything kubetrain made in ``namespace``."""
    selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
    rows = [["KIND", "NAME", "STATE", "AGE", "SCHEDULE"]]
    for cron in cluster.list("CronJob", namespace, selector)["items"]:
        spec = cron["spec"]
        state = "Suspended" if spec.get("suspend") else f"Active {len((cron.get('status') or {}).get('active') or [])}"
        rows.append(["cronjob", cron["metadata"]["name"], state, age(cron["metadata"].get("creationTimestamp")),
                     f"{spec['schedule']} ({spec.get('timeZone', '-')})"])
    for job in sorted_pods(cluster.list("Job", namespace, selector)["items"]):
        owner = next((o["name"] for o in job["metadata"].get("ownerReferences") or []
                      if o.get("kind") == "CronJob"), "")
        rows.append(["job", job["metadata"]["name"], job_state(job).phase,
                     age(job["metadata"].get("creationTimestamp")), f"(run of {owner})" if owner else "-"])
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

