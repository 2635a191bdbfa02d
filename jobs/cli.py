"""``python -m jobs``: render, submit and follow training Jobs from a job spec.

Exit codes: 0 ok; 1 the cluster said no, or the Job failed / got stuck / timed out (``wait``);
2 a bad spec or bad usage (nothing was sent).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from jobs.spec import SpecError, load_spec
from trainer.config import parse_overrides
from trainer.errors import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNEXPECTED, ConfigError

# The launcher's exit codes are rows of the trainer's table (trainer/errors.py).
EXIT_FAILED = EXIT_UNEXPECTED  # the cluster said no, or the Job failed
EXIT_USAGE = EXIT_CONFIG  # a bad spec or bad usage: nothing was sent

EPILOG = """\
examples:
  python -m jobs render examples/kind.yaml | kubectl apply -f -     # preview, or apply by hand
  python -m jobs submit examples/kind.yaml                          # idempotent
  python -m jobs logs digits-kind -n kubetrain -f                   # follows retries too
  python -m jobs wait digits-kind -n kubetrain --timeout 1800       # exit 1 says why it failed
  python -m jobs list -n kubetrain
exit codes: 0 ok, 1 failed (cluster error, Job failed, stuck or timed out), 2 bad spec or usage.
spec reference: docs/launcher.md
"""


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    conn = argparse.ArgumentParser(add_help=False)
    g = conn.add_argument_group("cluster (like kubectl's flags; in a pod: the in-cluster config)")
    g.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    g.add_argument("--context", help="kubeconfig context (default: the current context)")
    g.add_argument("-n", "--namespace", default="",
                   help="namespace (default: the spec's, else the context's, else 'default')")
    g.add_argument("-v", "--verbose", action="store_true", help="log API calls")

    p = argparse.ArgumentParser(prog="python -m jobs", description="Render, submit and follow training Jobs from a job spec.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def spec_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("spec", metavar="SPEC", help="job spec YAML file (see examples/)")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a train: setting, e.g. --set epochs=3 (repeatable)")

    r = sub.add_parser("render", help="print the manifests as kubectl-ready YAML (no cluster needed)")
    spec_args(r)
    r.add_argument("-n", "--namespace", default="", help="write this namespace into the manifests")

    s = sub.add_parser("submit", parents=[conn], help="create the Job or CronJob (idempotent)")
    spec_args(s)

    def name_parser(cmd: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(cmd, parents=[conn], help=help)
        sp.add_argument("name", metavar="NAME", help="the spec's name (a Job or CronJob)")
        return sp

    name_parser("status", "state of a Job (its pods) or CronJob (its runs)")
    lg = name_parser("logs", "the trainer's log (a CronJob: its newest run)")
    lg.add_argument("-f", "--follow", action="store_true",
                    help="stream until the Job ends, moving to each retry's new pod")
    lg.add_argument("--all-pods", action="store_true", help="every attempt's log, oldest first")
    w = name_parser("wait", "wait until the Job ends; exit 1 with the reason if it failed")
    w.add_argument("--timeout", type=float, default=86400, metavar="SECONDS",
                   help="give up after this long (default: 86400)")
    w.add_argument("--pending-timeout", type=float, default=600, metavar="SECONDS",
                   help="fail when a pod cannot be scheduled or started for this long (default: 600)")
    name_parser("delete", "delete a Job or CronJob, its pods and its ConfigMap")
    sub.add_parser("list", parents=[conn], help="Jobs and CronJobs made by kubetrain, with state and age")
    return p


def _spec(args: argparse.Namespace):
    try:
        overrides = parse_overrides(args.overrides)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return load_spec(args.spec, overrides)


def _namespace(args: argparse.Namespace, spec_namespace: str, default: str) -> str:
    """-n wins (the same spec can go to a test namespace), then the spec's, then the context's."""
    return args.namespace or spec_namespace or default


def _run(args: argparse.Namespace) -> int:
    if args.command == "render":
        from jobs.render import render, to_yaml

        sys.stdout.write(to_yaml(render(_spec(args), args.namespace)))
        return EXIT_OK

    from jobs import follow
    from jobs.cluster import connect
    from jobs.submit import delete, submit

    spec = _spec(args) if args.command == "submit" else None
    cluster = connect(args.kubeconfig, args.context)
    ns = _namespace(args, spec.namespace if spec else "", cluster.default_namespace)
    err = lambda line: print(line, file=sys.stderr, flush=True)

    if args.command == "submit":
        done = submit(cluster, spec, ns)
        verb = "created" if done.created else "unchanged (already submitted with this spec)"
        print(f"{done.kind.lower()}.batch/{done.name} {verb} in namespace {ns}")
        flags = f"-n {ns}" + (f" --context {args.context}" if args.context else "")
        if done.kind == "Job":
            print(f"follow it:   python -m jobs logs {done.name} {flags} -f")
            print(f"wait for it: python -m jobs wait {done.name} {flags}")
        else:
            print(f"runs on schedule {spec.schedule!r} ({spec.time_zone}); "
                  f"see them: python -m jobs status {done.name} {flags}")
        return EXIT_OK
    if args.command == "status":
        print(follow.status_text(cluster, ns, args.name))
        return EXIT_OK
    if args.command == "logs":
        name = follow.resolve_job(cluster, ns, args.name)
        for line in follow.stream_logs(cluster, ns, name, follow=args.follow,
                                       all_pods=args.all_pods, report=err):
            print(line, flush=args.follow)
        return EXIT_OK
    if args.command == "wait":
        name = follow.resolve_job(cluster, ns, args.name)
        code, message = follow.wait(cluster, ns, name, timeout_seconds=args.timeout,
                                    pending_timeout_seconds=args.pending_timeout, report=err)
        print(message, file=sys.stdout if code == EXIT_OK else sys.stderr)
        return code
    if args.command == "delete":
        kind = delete(cluster, args.name, ns)
        print(f"{kind.lower()}.batch/{args.name} deleted from namespace {ns} (with its pods and config)")
        return EXIT_OK
    if args.command == "list":
        print(follow.format_table(follow.list_rows(cluster, ns)))
        return EXIT_OK
    raise UsageError(f"unknown command {args.command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from jobs.cluster import ClusterError

    try:
        return _run(args)
    except (SpecError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `python -m jobs logs NAME | head`
        sys.stderr.close()
        return EXIT_OK
