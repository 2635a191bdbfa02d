"""``python -m trainer``: the container's entry point.

    python -m trainer --data URI --output URI [--epochs N] [--config FILE] [--set KEY=VALUE ...]
    python -m trainer data push SRC gs://bucket/prefix
    python -m trainer data pack SRC DEST

Exit codes: 0 success, 2 bad configuration or usage, 3 bad or missing data, 1 unexpected
error, 75 multi-worker: another worker was lost (restart all workers to resume), 143 stopped
by SIGTERM after saving a checkpoint (run it again to resume).

Multi-worker: with ``TF_CONFIG`` (or ``KUBETRAIN_WORKERS`` + ``JOB_COMPLETION_INDEX``) naming
more than one worker, a failing worker leaves at once (``os._exit``) instead of waiting for
TensorFlow's shutdown barrier (see ``trainer/runtime/multiworker.py``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import textwrap
import traceback

from trainer.config import field_docs, load_config, parse_overrides, read_config_file
from trainer.core import errors, preemption
from trainer.core.quoting import brief
from trainer.runtime import multiworker, runlog

log = logging.getLogger("trainer")

EPILOG = """\
config keys (YAML file via --config, or --set KEY=VALUE; flags above win over both):
{keys}

data layout: one subfolder per class (JPEG/PNG/BMP/GIF), optionally inside train/ val/ test/;
missing splits are carved out of train/ by a seeded hash of each file's path (a file's split
never depends on the other files: new images never move an old test image into train).

output: config.yaml, checkpoints/, model/ (model.keras, saved_model/, class_names.json),
report/ (metrics.json, learning_curves.png, confusion_matrix.png, predictions.png, report.html).
Run again with the same --output to resume from the last checkpoint.

exit codes: {exit_codes}

multi-worker: set TF_CONFIG (standard: cluster.worker = [host:port, ...], task.index = i) in
every worker process, all with the same --output; worker 0 writes it, the others only read.

examples:
  python -m trainer --data builtin:digits --output runs/digits
  python -m trainer --data ./flowers --output gs://my-bucket/runs/flowers --set model=seed_cnn
  python -m trainer data push builtin:digits gs://my-bucket/datasets/digits
  python -m trainer data pack ./flowers gs://my-bucket/packed/flowers   # then --data that
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2 with one line, like config errors
        self.print_usage(sys.stderr)
        self.exit(errors.EXIT_CONFIG, f"error: {message}\n")


def _exit_codes_help() -> str:
    text = " | ".join(f"{row.code} {row.meaning}" for row in errors.EXIT_CODES if row.label)
    return textwrap.fill(text, width=90, subsequent_indent="  ")


def _keys_help() -> str:
    lines = []
    for key, help_text, default, choices in field_docs():
        default_s = "auto" if default is None else default
        choice_s = f" [{'|'.join(choices)}]" if choices else ""
        lines.append(f"  {key:<24} {help_text}{choice_s} (default: {default_s})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m trainer",
        description="Train an image classifier, evaluate it and write a report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG.format(keys=_keys_help(), exit_codes=_exit_codes_help()),
    )
    p.add_argument("--data", help="builtin:digits, a local directory, or gs://bucket/prefix "
                   "(class folders, or a packed dataset: streamed)")
    p.add_argument("--output", help="run directory: local path or gs://bucket/prefix")
    p.add_argument("--config", metavar="FILE", help="YAML file with config keys (listed below)")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--model", help="seed_cnn or resnet_small")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="batch size per replica")
    p.add_argument("--learning-rate", type=float, dest="learning_rate", help="peak learning rate")
    p.add_argument("--image-size", type=int, dest="image_size", help="square input size in pixels")
    p.add_argument("--cpu-replicas", type=int, dest="cpu_replicas",
                   help="mirror over N logical CPU devices (no GPU needed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set augment.flip=none (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def _number(kind: type, low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite ``kind`` between ``low`` and ``high`` (each included unless
    ``*_open``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{brief(text)} is not {what}") from None
        if (not math.isfinite(value) or value < low or value > high or (low_open and value == low)
                or (high_open and value == high)):
            shown = (lambda v: str(int(v))) if kind is int else (lambda v: f"{v:g}")
            interval = f"{'(' if low_open else '['}{shown(low)}, {shown(high)}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{brief(text)} must be in {interval}")
        return value

    return parse


def _data_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m trainer data", description="Dataset helpers.")
    sub = p.add_subparsers(dest="action", required=True)
    push = sub.add_parser("push", help="upload a dataset (builtin:digits or a folder) to a bucket prefix")
    push.add_argument("src", help="builtin:digits or a local directory in the class-folder layout")
    push.add_argument("dst", help="gs://bucket/prefix")
    push.add_argument("--workers", type=_number(int, 1, 256), default=16, help="parallel uploads (default 16)")
    push.add_argument("--create-bucket", action="store_true",
                      help="create the bucket if it does not exist (handy with an emulator)")
    pack = sub.add_parser(
        "pack", help="write a dataset as packed shards + manifest.json, streamed by --data (docs/storage.md)",
        description="Write SRC as TFRecord shards of the original image bytes per split, and "
        "DEST/manifest.json last. Splits are fixed now (train/ val/ test/ folders, else a hash of "
        "each file's path and --seed). Run it again after an interruption: it resumes.")
    pack.add_argument("src", help="builtin:digits, a class-folder directory, or gs://bucket/prefix")
    pack.add_argument("dst", help="a new local directory or gs://bucket/prefix")
    pack.add_argument("--shard-size-mb", type=_number(float, 0, 65536, low_open=True), default=128, dest="shard_mb",
                      help="target shard size in MB (default 128)")
    pack.add_argument("--seed", type=_number(int, 0, 2**32 - 1), default=1337, help="split seed (default 1337, as training)")
    pack.add_argument("--val-fraction", type=_number(float, 0, 0.5, high_open=True), default=0.1, dest="val_fraction",
                      help="val share when SRC has no val/ folder (default 0.1)")
    pack.add_argument("--test-fraction", type=_number(float, 0, 0.5, low_open=True, high_open=True), default=0.1, dest="test_fraction",
                      help="test share when SRC has no test/ folder (default 0.1)")
    pack.add_argument("--max-bad-image-fraction", type=_number(float, 0, 1), default=0.01, dest="max_bad",
                      help="unreadable images are skipped; above this share packing fails (default 0.01)")
    pack.add_argument("--workers", type=_number(int, 1, 256), default=8, help="threads reading and checking images (default 8)")
    pack.add_argument("--create-bucket", action="store_true",
                      help="create the bucket if it does not exist (handy with an emulator)")
    return p


def configure_logging(quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO chatter
    for noisy in ("tensorflow", "absl", "matplotlib", "PIL", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _train(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.quiet)
    file_values = {}
    if args.config:
        file_values = read_config_file(args.config)
    overrides = parse_overrides(args.set)
    for key in ("data", "output", "epochs", "model", "batch_size", "learning_rate", "image_size", "cpu_replicas"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    cfg = load_config(file_values, overrides)
    if args.print_config:
        sys.stdout.write(cfg.to_yaml())
        return errors.EXIT_OK

    # Imported once the config is valid: --help and a bad config answer without loading numpy
    # and the run's modules (a deferral tests/unit/test_import_layers.py names).
    from trainer.run import run

    stop = preemption.StagedStop()
    preemption.install(stop)
    log.info("training %s on %s -> %s", cfg.model, cfg.data, cfg.output)
    try:
        run(cfg, stop)
    except BaseException as exc:
        preemption.disarm()
        runlog.finish(exc)  # the failed attempt's log, with its error, outlives the pod
        raise
    preemption.disarm()
    runlog.finish()
    return errors.EXIT_OK


def _data(argv: list[str]) -> int:
    args = _data_parser().parse_args(argv)
    configure_logging()
    if args.action == "pack":
        from trainer.data.packer import PackOptions, pack
        from trainer.run import scratch_dir

        opts = PackOptions(shard_mb=args.shard_mb, seed=args.seed, val_fraction=args.val_fraction,
                           test_fraction=args.test_fraction, max_bad_image_fraction=args.max_bad,
                           workers=args.workers, create_bucket=args.create_bucket)
        pack(args.src, args.dst, opts, scratch_dir() / "pack")
        return errors.EXIT_OK
    from trainer.data.push import push_dataset  # lazy: the cloud client

    count = push_dataset(args.src, args.dst, workers=args.workers, create_bucket=args.create_bucket)
    log.info("pushed %d objects to %s", count, args.dst)
    return errors.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if code and multiworker.active() is not None:
        multiworker.hard_exit(code)  # leave the cluster now, not after its shutdown barrier
    return code


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["data"]:
            return _data(argv[1:])
        return _train(argv)
    except errors.TrainerError as exc:
        line = " ".join(str(exc).split())
        print(f"{errors.exit_code(exc.exit_code).label}: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(errors.exit_code(errors.EXIT_INTERRUPTED).label, file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    except Exception:
        if multiworker.active() is None:
            raise
        traceback.print_exc()
        return errors.EXIT_UNEXPECTED


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: TensorFlow's takes 1-3 s of a short run.

    Only once ``main`` has returned: by then every file is written, pushed and published and no
    thread has work left, so there is nothing for the teardown to finish but logs and stdio.
    """
    packed = sys.modules.get("trainer.data.packed")
    if packed is not None:
        packed.clear_stream_scratch()  # its atexit hook would not run
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
