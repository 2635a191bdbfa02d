"""``python -m jobs``: render, submit and follow training Jobs from a job spec, and operate
them on day 2 (run a CronJob now, suspend, resume, compare runs).

Exit codes: 0 ok; 1 the cluster said no, or the Job failed / got stuck / timed out (``wait``);
2 a bad spec or bad usage (nothing was sent), or ``submit --check`` found it could not start.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import fields

from jobs import describe, follow, history, listing, logs, output, runs, status
from jobs.cluster import ClusterError, KubeconfigError, connect
from jobs.control import run_now, set_suspended
from jobs.durations import duration
from jobs.preflight import checks
from jobs.render import render, to_yaml
from jobs.spec import JobSpec, SpecError, load_spec
from jobs.spec import warnings as spec_warnings
from jobs.status import run_output
from jobs.submit import delete, submit
from trainer.config import parse_overrides
from trainer.core.errors import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNEXPECTED,
    ConfigError,
    TrainerError,
)

# The launcher's exit codes are rows of the trainer's table (trainer/core/errors.py).
EXIT_FAILED = EXIT_UNEXPECTED  # the cluster said no, or the Job failed
EXIT_USAGE = EXIT_CONFIG  # a bad spec or bad usage: nothing was sent

EPILOG = """\
examples:
  python -m jobs render examples/kind.yaml | kubectl apply -f -     # preview, or apply by hand
  python -m jobs submit examples/kind.yaml                          # idempotent
  python -m jobs submit examples/nightly.yaml --set gpus=2          # a CronJob changes in place
  python -m jobs submit examples/gpu.yaml --dry-run=server          # the API server validates
  python -m jobs submit examples/gpu.yaml --check                   # could it start? (exit 2 if not)
  python -m jobs -n kubetrain logs digits-kind -f --since 10m       # follows retries too
  python -m jobs wait digits-kind -n kubetrain --timeout 2h         # exit 1 says why it failed
  python -m jobs status digits-kind -n kubetrain                    # epoch, val accuracy, ETA
  python -m jobs run-now digits-nightly -n kubetrain                # a run of a CronJob, now
  python -m jobs suspend digits-nightly -n kubetrain                # and resume
  python -m jobs list -n kubetrain -o wide
  python -m jobs runs gs://my-bucket/runs/nightly                   # runs compared, index.html
exit codes: 0 ok, 1 failed (cluster error, Job failed, stuck or timed out), 2 bad spec or usage
(or submit --check: it could not start).
spec reference: docs/launcher.md
"""

SPEC_KEYS = frozenset(f.name for f in fields(JobSpec)) - {"train"}


class UsageError(Exception):
    pass


def _cluster_flags(parser: argparse.ArgumentParser, top: bool) -> None:
    """kubectl's cluster flags. Accepted before the verb (``top``) and after it: after-verb
    values are only set when given (SUPPRESS), so they never reset a before-verb one."""
    def default(value):
        return value if top else argparse.SUPPRESS

    g = parser.add_argument_group("cluster (like kubectl's flags, before or after the command; "
                                  "in a pod: the in-cluster config)")
    g.add_argument("--kubeconfig", default=default(None),
                   help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    g.add_argument("--context", default=default(None), help="kubeconfig context (default: the current one)")
    g.add_argument("-n", "--namespace", default=default(""),
                   help="namespace (default: the spec's, else the context's, else 'default')")
    g.add_argument("-v", "--verbose", action="store_true", default=default(False), help="log API calls")


# Over 60 lines on purpose: one declaration per verb and flag, read top to bottom like --help.
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs",
                                description="Render, submit, follow and operate training Jobs from a job spec.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _cluster_flags(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, cluster: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        if cluster:
            _cluster_flags(sp, top=False)
        return sp

    def out_flag(sp: argparse.ArgumentParser, default: str = "") -> None:
        sp.add_argument("-o", "--output", dest="output", choices=output.FORMATS, default=default or None,
                        help="json, yaml, name (kind/name) or wide (more columns)"
                        + (f"; default {default}" if default else "; default: text"))

    def spec_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("spec", metavar="SPEC", help="job spec YAML file (see examples/)")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key (image=..., gpus=2, storage.credentials=secret) or "
                             "a train: setting (epochs=3, train.model=seed_cnn); repeatable")

    r = command("render", "print the manifests as kubectl-ready YAML (no cluster needed)", cluster=False)
    spec_args(r)
    r.add_argument("-n", "--namespace", default=argparse.SUPPRESS,
                   help="write this namespace into the manifests")
    out_flag(r, "yaml")
    r.set_defaults(handler=_render)

    s = command("submit", "create the Job or CronJob, or update a changed CronJob in place "
                          "(server-side apply; idempotent)")
    spec_args(s)
    s.add_argument("--dry-run", nargs="?", const="server", default="none",
                   choices=("none", "server", "client"),
                   help="server: the API server validates and defaults everything and stores "
                        "nothing; client: only render (default: none)")
    s.add_argument("--check", action="store_true",
                   help="create nothing; say whether it could start: server dry run, the "
                        "ServiceAccount, the LocalQueue, the Secrets it names, a node that could "
                        "hold the pod; exit 2 with the reason when not")
    out_flag(s)
    s.set_defaults(handler=_submit_or_render)

    def name_command(cmd: str, help: str, handler) -> argparse.ArgumentParser:
        sp = command(cmd, help)
        sp.add_argument("name", metavar="NAME", help="the spec's name (a Job or CronJob)")
        sp.set_defaults(handler=_on_cluster(handler))
        return sp

    st = name_command("status", "state of a Job (pods, progress: epoch, val accuracy, img/s, ETA) "
                                "or CronJob (its runs)", _status)
    out_flag(st)
    lg = name_command("logs", "the trainer's log (a CronJob: its newest run)", _logs)
    lg.add_argument("-f", "--follow", action="store_true",
                    help="stream until the Job ends, moving to each retry's new pod")
    lg.add_argument("--all-pods", action="store_true", help="every attempt's log, oldest first")
    who = lg.add_mutually_exclusive_group()
    who.add_argument("--worker", type=int, default=None, metavar="K",
                     help="multi-worker job: worker K's log (default: worker 0, which writes the run)")
    who.add_argument("--all-workers", action="store_true",
                     help="multi-worker job: every worker's log, lines prefixed [worker K]")
    lg.add_argument("--tail", type=int, default=None, metavar="N", help="only the last N lines (of each pod)")
    lg.add_argument("--since", type=duration, default=None, metavar="DURATION",
                    help="only lines newer than this, e.g. 10m, 2h")
    lg.add_argument("--timestamps", action="store_true", help="prefix each line with its time")
    w = name_command("wait", "wait until the Job ends; exit 1 with the reason if it failed", _wait)
    w.add_argument("--timeout", type=duration, default=86400, metavar="DURATION",
                   help="give up after this long: 90s, 30m, 2h, or seconds (default: 24h)")
    w.add_argument("--pending-timeout", type=duration, default=600, metavar="DURATION",
                   help="fail when a pod cannot be scheduled or started for this long (default: 10m)")
    name_command("delete", "delete a Job or CronJob, its pods, its ConfigMap (and workers' Service)",
                 _delete)
    rn = name_command("run-now", "start a run of a CronJob now (kubectl create job --from=cronjob/NAME), "
                                 "into its own output directory", _run_now)
    rn.add_argument("--job-name", default="", help="the new Job's name (default: NAME-m<time>)")
    out_flag(rn)
    name_command("suspend", "suspend a CronJob (no new runs) or a Job (its pods stop, checkpointed)",
                 _suspend_or_resume)
    name_command("resume", "resume a suspended CronJob or Job", _suspend_or_resume)
    ls = command("list", "Jobs and CronJobs made by kubetrain: state, age, progress")
    out_flag(ls)
    ls.set_defaults(handler=_on_cluster(_list))
    rs = command("runs", "list the runs under a run directory's parent (local or gs://) and write "
                         "its index.html (table, trend plot); no cluster needed (its flags are "
                         "accepted and ignored)")
    rs.add_argument("uri", metavar="URI", help="the parent of run directories, e.g. gs://bucket/runs/nightly")
    rs.add_argument("--no-html", action="store_true", help="only print; do not write index.html")
    rs.add_argument("-o", "--output", dest="output", choices=("json", "yaml", "wide"), default=None,
                    help="json, yaml or wide (more columns); default: a table")
    rs.set_defaults(handler=_runs)
    return p


def split_overrides(pairs: list[str]) -> tuple[dict, dict]:
    """``--set`` pairs -> (spec-level overrides, train: overrides). A key naming a spec key
    (``image``, ``gpus``, ``storage.secret``) goes to the spec, ``train.X`` and every other key
    to ``train:``."""
    try:
        values = parse_overrides(pairs)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    train = values.pop("train", {})
    if not isinstance(train, dict):
        raise UsageError("--set train=... needs a key: --set train.KEY=VALUE")
    spec = {k: values.pop(k) for k in list(values) if k in SPEC_KEYS}
    return spec, {**values, **train}


def _spec(args: argparse.Namespace):
    spec_overrides, train_overrides = split_overrides(args.overrides)
    return load_spec(args.spec, train_overrides, spec_overrides)


def _namespace(args: argparse.Namespace, spec_namespace: str, default: str) -> str:
    """-n wins (the same spec can go to a test namespace), then the spec's, then the context's."""
    return args.namespace or spec_namespace or default


def _print_objects(objects: list[dict], fmt: str) -> None:
    if fmt == "name":
        sys.stdout.write(output.names(objects))
    else:
        data = objects[0] if len(objects) == 1 else output.as_list(objects)
        sys.stdout.write(output.dump(data, fmt))


def _warn(spec: JobSpec) -> None:
    """Legal but risky spec settings: one ``warning:`` line each on stderr."""
    for line in spec_warnings(spec):
        print(f"warning: {line}", file=sys.stderr)


def _render(args: argparse.Namespace) -> int:
    spec = _spec(args)
    _warn(spec)
    manifests = render(spec, getattr(args, "namespace", ""))
    if args.output == "yaml":
        sys.stdout.write(to_yaml(manifests))
    elif args.output == "wide":
        print(output.table(listing.manifest_rows(manifests)))
    else:
        _print_objects(manifests, args.output)
    return EXIT_OK


def _submit(args: argparse.Namespace, cluster, spec, ns: str) -> int:
    done = submit(cluster, spec, ns, dry_run=args.dry_run == "server")
    if args.output in ("json", "yaml", "name"):
        _print_objects(done.objects, args.output)
        return EXIT_OK
    dry = " (server dry run)" if done.dry_run else ""
    verb = {"created": "created", "configured": "configured (updated in place; its runs kept)",
            "unchanged": "unchanged (already submitted with this spec)"}[done.action]
    print(f"{done.kind.lower()}.batch/{done.name} {verb}{dry} in namespace {ns}")
    if done.dry_run:
        return EXIT_OK
    flags = f"-n {ns}" + (f" --context {args.context}" if args.context else "")
    if done.kind == "Job":
        print(f"follow it:   python -m jobs logs {done.name} {flags} -f")
        print(f"progress:    python -m jobs status {done.name} {flags}")
        print(f"wait for it: python -m jobs wait {done.name} {flags}")
    else:
        print(f"runs on schedule {spec.schedule!r} ({spec.time_zone}); "
              f"see them: python -m jobs status {done.name} {flags}; "
              f"start one now: python -m jobs run-now {done.name} {flags}")
    if args.output == "wide":
        print(output.table(listing.manifest_rows(done.objects)))
    return EXIT_OK


def _check(cluster, spec, ns: str) -> int:
    found = checks(cluster, spec, ns)
    for check in found:
        mark = "ok  " if check.ok and check.checked else "--  " if check.ok else "FAIL"
        print(f"{mark} {check.line}")
    failed = [c for c in found if not c.ok]
    if failed:
        print(f"error: {spec.name} would not start: {failed[0].line}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{spec.name} could start in namespace {ns} (nothing was created)")
    return EXIT_OK


def _status(args: argparse.Namespace, cluster, ns: str) -> int:
    found = status.lookup(cluster, ns, args.name)
    if args.output == "name":
        print(output.resource_name({"kind": found.kind, "metadata": found.obj["metadata"]}))
        return EXIT_OK
    obj = status.status_object(found)
    if args.output in ("json", "yaml"):
        sys.stdout.write(output.dump(obj, args.output))
        return EXIT_OK
    print(describe.status_text(found))
    for line in status.progress_lines(obj):
        print(line)
    return EXIT_OK


def _list(args: argparse.Namespace, cluster, ns: str) -> int:
    objects = listing.list_objects(cluster, ns)
    if args.output in ("json", "yaml"):
        sys.stdout.write(output.dump(output.as_list(objects), args.output))
    elif args.output == "name":
        sys.stdout.write(output.names([{"kind": o["kind"], "metadata": {"name": o["name"]}}
                                       for o in objects]))
    else:
        print(output.table(listing.rows(objects, wide=args.output == "wide")))
    return EXIT_OK


def _runs(args: argparse.Namespace) -> int:
    found = runs.collect(args.uri)
    for run in found:
        for problem in run.problems:
            print(f"warning: {problem}", file=sys.stderr)
    if args.output in ("json", "yaml"):
        sys.stdout.write(output.dump([r.to_dict() for r in found], args.output))
    else:
        print(output.table(runs.rows(found, wide=args.output == "wide")))
        for target, entries, problems in history.collect(history.targets(args.uri, [r.promoted_to for r in found])):
            for problem in problems:
                print(f"warning: {problem}", file=sys.stderr)
            print(f"\npromotions to {target} (the last {len(entries)}, oldest first):")
            print(output.table(history.rows(entries)))
    if not args.no_html:
        index = runs.write_index(args.uri, found)
        print(f"wrote {index}", file=sys.stderr if args.output else sys.stdout)
    return EXIT_OK


def _submit_or_render(args: argparse.Namespace) -> int:
    """``submit``: ``--dry-run=client`` only renders; otherwise to the cluster."""
    spec = _spec(args)
    _warn(spec)
    if args.dry_run == "client":
        manifests = render(spec, args.namespace)
        if args.output in (None, "yaml"):
            sys.stdout.write(to_yaml(manifests))
        else:
            _print_objects(manifests, "json" if args.output == "wide" else args.output)
        return EXIT_OK
    cluster = _connect(args)
    ns = _namespace(args, spec.namespace, cluster.default_namespace)
    if args.check:
        return _check(cluster, spec, ns)
    return _submit(args, cluster, spec, ns)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _connect(args: argparse.Namespace):
    cluster = connect(args.kubeconfig, args.context)
    cluster.notify = _err  # an API server restart: one line when it goes, one when it is back
    return cluster


def _logs(args: argparse.Namespace, cluster, ns: str) -> int:
    name = follow.resolve_job(cluster, ns, args.name)
    for line in logs.stream_logs(cluster, ns, name, follow=args.follow, all_pods=args.all_pods,
                                 report=_err, tail_lines=args.tail, since_seconds=args.since,
                                 timestamps=args.timestamps, worker=args.worker,
                                 all_workers=args.all_workers):
        print(line, flush=args.follow)
    return EXIT_OK


def _wait(args: argparse.Namespace, cluster, ns: str) -> int:
    name = follow.resolve_job(cluster, ns, args.name)
    code, message = follow.wait(cluster, ns, name, timeout_seconds=args.timeout,
                                pending_timeout_seconds=args.pending_timeout, report=_err)
    print(message, file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code


def _delete(args: argparse.Namespace, cluster, ns: str) -> int:
    kind = delete(cluster, args.name, ns)
    print(f"{kind.lower()}.batch/{args.name} deleted from namespace {ns} (with its pods and config)")
    return EXIT_OK


def _run_now(args: argparse.Namespace, cluster, ns: str) -> int:
    job = run_now(cluster, ns, args.name, args.job_name)
    if args.output in ("json", "yaml", "name"):
        _print_objects([job], args.output)
        return EXIT_OK
    name = job["metadata"]["name"]
    print(f"job.batch/{name} created in namespace {ns} from cronjob {args.name}; "
          f"output {run_output(job)}")
    print(f"follow it: python -m jobs logs {name} -n {ns} -f")
    return EXIT_OK


def _suspend_or_resume(args: argparse.Namespace, cluster, ns: str) -> int:
    kind, _ = set_suspended(cluster, ns, args.name, args.command == "suspend")
    done = "suspended" if args.command == "suspend" else "resumed"
    print(f"{kind.lower()}.batch/{args.name} {done} in namespace {ns}")
    return EXIT_OK


def _on_cluster(handler):
    """A verb's handler(args, cluster, namespace) as a handler(args) that connects first."""
    def connected(args: argparse.Namespace) -> int:
        cluster = _connect(args)
        return handler(args, cluster, _namespace(args, "", cluster.default_namespace))
    return connected


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

    try:
        return args.handler(args)
    except (SpecError, UsageError, KubeconfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except TrainerError as exc:  # jobs runs: a storage error (missing bucket, credentials)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `python -m jobs logs NAME | head`
        sys.stderr.close()
        return EXIT_OK
