"""``jobs status`` text: a few lines on a Job or CronJob and its pods or runs, drawn from what
``jobs.status.lookup`` read (no API reads of its own), with the state helpers in ``jobs.follow``."""

from __future__ import annotations

from jobs import timeline
from jobs.follow import (
    _ago,
    _now,
    _workers_text,
    age,
    exit_summary,
    explain_failure,
    job_state,
    pod_problem,
    worker_index,
    worker_phases,
)
from jobs.status import Found, run_output


def status_text(found: Found) -> str:
    """A few lines on the Job or CronJob ``status.lookup`` found, and its pods or runs."""
    if found.kind == "Job":
        lines = [_job_text(found.obj, found.pods)]
        lines += timeline.lines(found.obj, found.pods, found.workload, _now())
        if found.why_pending:
            lines.append(f"  waiting: {found.why_pending}")
        return "\n".join(lines)
    cron = found.obj
    spec, st = cron["spec"], cron.get("status") or {}
    lines = [f"cronjob {cron['metadata']['name']} (namespace {cron['metadata'].get('namespace', '')}): "
             f"schedule {spec['schedule']!r} ({spec.get('timeZone', 'controller local time')})"
             + (", suspended" if spec.get("suspend") else ""),
             (f"  last run {_ago(st.get('lastScheduleTime'))}, last success "
              f"{_ago(st.get('lastSuccessfulTime'))}, active {len(st.get('active') or [])}")]
    for run in found.runs:
        lines.append(f"  run {run['metadata']['name']}  {job_state(run).phase}  "
                     f"{age(run['metadata'].get('creationTimestamp'))}")
    return "\n".join(lines)


def _job_text(job: dict, pods: list[dict]) -> str:
    name, namespace = job["metadata"]["name"], job["metadata"].get("namespace", "")
    state = job_state(job)
    st = job.get("status") or {}
    lines = [f"job {name} (namespace {namespace}): {state.phase}"
             + (f" - {state.reason}" if state.reason else "")
             + (f": {state.message}" if state.message else ""),
             (f"  created {age(job['metadata'].get('creationTimestamp'))} ago; "
              f"pods active {st.get('active', 0)}, succeeded {st.get('succeeded', 0)}, "
              f"failed {st.get('failed', 0)} (backoffLimit {job['spec'].get('backoffLimit')})")]
    output = run_output(job)
    if output:
        lines.append(f"  output {output}")
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
