"""One training run, end to end: data -> devices -> fit -> evaluate -> report -> export.

Output layout (``<output>`` is a local directory or ``gs://bucket/prefix``)::

    config.yaml              the resolved config (written once the checkpoint, if any, restored)
    checkpoints/             resumable checkpoints + latest.json marker
    model/                   exported model with its class names (published when complete)
    report/                  metrics.json, learning_curves.png, confusion_matrix.png,
                             predictions.png, report.html (published when complete)

``report/`` and ``model/`` are built aside and published whole, so a failed or interrupted
run never replaces the previous good ones. The report is drawn in a second process started when
the run begins (``trainer.report.worker``), while this one exports the model; the time of each
lap goes into ``metrics.json`` as ``phase_seconds`` (``trainer.runtime.stopwatch``), and
every wall second of the run, over its attempts, as ``ledger`` (``trainer.training.ledger``).

With several workers (``trainer.runtime.multiworker``) every worker trains and evaluates, and only
worker 0 writes the run directory; the others read it (to resume from its checkpoint) and write
nothing shared. Worker 0 writes ``config.yaml`` only once all workers joined, so a worker that
finds it knows this is a restart (and first lets the previous attempt's workers leave).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from trainer import promote, promotions
from trainer.config import TrainConfig
from trainer.core.contract import SCRATCH_ENV
from trainer.core.errors import ConfigError, DataError
from trainer.core.preemption import SaveTimer, StagedStop, critical
from trainer.core.quoting import brief
from trainer.data import dataset as data_lib
from trainer.data import scan
from trainer.model import weights
from trainer.model.backbones import save_backbone_weights
from trainer.model.export import export_model
from trainer.report import METRICS_FILE, write_report
from trainer.report.worker import ReportWorker
from trainer.runtime import multiworker, runlog, workers
from trainer.runtime.devices import make_runtime
from trainer.runtime.stopwatch import Stopwatch
from trainer.runtime.workers import Cluster
from trainer.storage import RunDir, open_run_dir, storage_retries
from trainer.training import checkpoint
from trainer.training.checkpoint import Checkpointer
from trainer.training.ledger import Ledger
from trainer.training.ledger import describe as describe_ledger
from trainer.training.loop import Trainer
from trainer.training.observer import RunObserver

log = logging.getLogger(__name__)

# What may differ when a run directory is run again: how long and how to run, not what is
# trained. Any other key that differs from the checkpointed run's config.yaml is refused, so
# config.yaml and report/ always describe the model that was trained.
MAY_CHANGE_ON_RESUME = ("output", "epochs", "export", "promote_to", "keep_checkpoints", "cache", "cpu_replicas",
                        "steps_per_execution", "jit_compile", "max_bad_image_fraction",
                        "max_image_pixels", "stream_window", "rendezvous_timeout_seconds",
                        "collective_timeout_seconds", "export_epoch", "weights_mirror",
                        "auto_reasons", "promotion_alpha", "promotion_max_recall_drop",
                        "promotion_wait_seconds", "skip_unchanged")


def scratch_dir() -> Path:
    """Writable local space: $KUBETRAIN_SCRATCH (an emptyDir in the pod) or the temp dir."""
    root = Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "kubetrain")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"scratch directory {brief(str(root))} is not writable ({exc.strerror or exc}); "
                          f"set {SCRATCH_ENV} to a writable directory (an emptyDir in the pod)") from None
    return root


def _check_same_run(run_dir: RunDir, cfg: TrainConfig) -> None:
    """Refuse to resume a run directory that holds a run with an incompatible config."""
    if not checkpoint.exists(run_dir) or not run_dir.pull("config.yaml"):
        return
    try:
        previous = yaml.safe_load((run_dir.local / "config.yaml").read_text())
        if not isinstance(previous, dict):
            raise TypeError("not a mapping")
    except (yaml.YAMLError, TypeError, OSError, UnicodeDecodeError):
        raise DataError(f"{run_dir.uri_of('config.yaml')} is unreadable but checkpoints/ exists: the "
                        "checkpoint's config is unknown; use a new --output or delete the run "
                        "directory to start over") from None
    current = cfg.to_dict()
    # Keys left at auto in both runs are derived again (from epochs, the machine, ...): a change
    # there follows from a key that may change (warmup from epochs, precision from the node).
    derived = set(previous.get("auto_reasons") or {}) & set(current.get("auto_reasons") or {})

    def differs(key: str) -> bool:
        old, new = previous[key], current[key]
        if isinstance(old, dict) and isinstance(new, dict):  # augment: each sub-key on its own
            return any(old.get(s) != new.get(s) for s in set(old) | set(new) if f"{key}.{s}" not in derived)
        return old != new

    changed = [k for k in current if k not in MAY_CHANGE_ON_RESUME and k not in derived
               and k in previous and differs(k)]
    if changed:
        diffs = ", ".join(f"{k}: {brief(previous[k], 40)} -> {brief(current[k], 40)}" for k in changed)
        raise ConfigError(f"{cfg.output} holds a run with a different config ({diffs}); "
                          "use a new --output, or the same settings to resume")


def _write_config(run_dir: RunDir, cfg: TrainConfig) -> None:
    """Write config.yaml atomically (a torn file would make the run directory unresumable)."""
    tmp = run_dir.local / ".config.yaml.tmp"
    tmp.write_text(cfg.to_yaml())
    with critical():
        os.replace(tmp, run_dir.local / "config.yaml")
        run_dir.push("config.yaml")


def run(cfg: TrainConfig, stop: StagedStop) -> dict:
    """Train, evaluate, report and export; returns the metrics. Raises TrainerError subclasses.

    ``stop.enter(stage)`` marks each stage: a SIGTERM outside training stops the run at once.
    """
    stopwatch = Stopwatch()
    ledger = Ledger.start()  # where the run's wall time goes, over its attempts (goodput)
    cluster = workers.from_environment()
    scratch = scratch_dir()
    chief = cluster is None or cluster.is_chief
    # Only the chief writes a report; its worker imports matplotlib & co. on the idle core now.
    reports = ReportWorker.start(scratch) if chief else ReportWorker(None)
    try:
        metrics = _run(cfg, stop, stopwatch, reports, ledger, cluster, scratch)
    except BaseException as exc:
        ledger.ended(exc)
        raise
    finally:
        reports.close()
    ledger.ended()
    return metrics


# Over 60 lines: data -> build -> fit -> evaluate share a dozen objects and two early returns
# (non-chief workers); the stage order with stop.enter/stopwatch.lap reads best in one place.
def _run(cfg: TrainConfig, stop, stopwatch: Stopwatch, reports: ReportWorker, ledger: Ledger,
         cluster: Cluster | None, scratch: Path) -> dict:
    wall_start = time.monotonic()
    chief = cluster is None or cluster.is_chief
    run_dir = open_run_dir(cfg.output, scratch / "staging", writer=chief)
    run_log = runlog.start(run_dir)
    if cfg.promote_to and chief:
        # Checked now, not after training: a missing bucket or a read-only path is exit 2.
        open_run_dir(cfg.promote_to, scratch / "promote", key="promote_to", recover=False)
    stop.enter("data loading")  # a bucket prefix is downloaded here too
    cfg = scan.fit_to_source(cfg, scratch).config  # image size etc. from the images
    init_weights = weights.resolve(cfg, scratch)  # before config.yaml: it records their checksum
    if init_weights.path:
        cfg = dataclasses.replace(cfg, auto_reasons={
            **cfg.auto_reasons, "weights_source": f"{init_weights.source}, sha256 {init_weights.sha256}"})
    _check_same_run(run_dir, cfg)
    ledger.attach(run_dir, enabled=chief)
    if cluster is not None and checkpoint.finished(run_dir, cfg.epochs):
        if not cluster.is_chief:  # worker 0 alone evaluates and reports; no peers needed
            log.info("all %d epochs are trained; worker 0 writes the report", cfg.epochs)
            return {}
        log.info("all %d epochs are trained: evaluating and reporting without the other workers", cfg.epochs)
        cluster = None
    restart = cluster is not None and run_dir.pull("config.yaml")

    dataset = data_lib.open_dataset(cfg, scratch)
    stopwatch.lap("data")
    if cfg.promote_to and cfg.skip_unchanged and not checkpoint.exists(run_dir):
        reason = promote.nothing_new(cfg, scratch / "promote", dataset)
        if reason:  # before any device, rendezvous or step: no accelerator time spent
            return _skipped(cfg, run_dir, scratch, dataset, reason, chief=chief)


    stop.enter("model building")
    if restart:
        multiworker.settle()
    runtime = make_runtime(cfg, cache_dir=scratch / "cache", cluster=cluster)
    trainer = Trainer(cfg, runtime, dataset, cache_dir=scratch / "cache", init_weights=init_weights)
    log.info("model %s: %d parameters; global batch %d (%d x %d replicas), %d steps per epoch",
             cfg.model, trainer.model.count_params(), trainer.global_batch, cfg.batch_size,
             runtime.replicas, trainer.steps_per_epoch)
    stopwatch.lap("startup")
    checkpointer = Checkpointer(run_dir, trainer.model, trainer.optimizer, cfg.keep_checkpoints,
                                is_chief=runtime.is_chief,
                                meta={"class_names": list(dataset.class_names), "model": cfg.model})
    save_timer = SaveTimer(checkpointer.save_seconds)
    checkpointer.after_save += [save_timer.check, run_log.push, ledger.saved]
    checkpointer.restore()  # a checkpoint that does not restore fails here, before config.yaml
    if runtime.is_chief:
        _write_config(run_dir, cfg)
    observer = RunObserver(run_dir, epochs=cfg.epochs, steps_per_epoch=trainer.steps_per_epoch,
                           global_batch=trainer.global_batch, learning_rate=trainer._current_lr,
                           enabled=checkpointer.is_chief, ledger=ledger)
    with data_lib.stream_errors(dataset):
        stop.enter("training", deferred=True)
        ledger.enter("training")
        try:
            result = trainer.fit(checkpointer, stop, observer)
        except BaseException as exc:
            observer.stopped(exc)
            raise
        stopwatch.lap("train")
        stop.enter("evaluation")
        ledger.enter("evaluating")
        test = trainer.evaluate("test", collect=True)
    if not runtime.is_chief:
        log.info("worker %d done: test accuracy %.4f; worker 0 writes the report and model",
                 runtime.worker_index, test["accuracy"])
        return {"test_accuracy": test["accuracy"]}
    metrics_args = _metrics_args(cfg, dataset, runtime, trainer, init_weights, result, test, observer,
                                 save_timer, run_log, wall_start)
    decision = turn = None
    with contextlib.ExitStack() as held:  # the promotion lock, from the comparison to the publish
        if cfg.promote_to:
            stop.enter("promotion check")
            ledger.enter("reporting")  # waiting for the lock too: after training, before the publish
            turn = held.enter_context(promotions.turn(cfg.promote_to, scratch / "promote", cfg.output,
                                                      cfg.promotion_wait_seconds))
            decision = promote.decide(
                cfg, scratch / "promote", dataset, test["labels"], test["probs"].argmax(-1),
                lambda current: promote.predictions_of(current, trainer.eval_batches("test"))
            ) if turn.held else promote.Decision(cfg.promote_to, False, f"not promoted: {turn.busy}",
                                                 float(test["accuracy"]))
            metrics_args["extra"]["promotion"] = {**decision.to_dict(),
                                                  "waited_for_lock_seconds": round(turn.waited_seconds, 3)}
            log.info("promotion to %s: %s (%s)", cfg.promote_to, "yes" if decision.promote else "no",
                     decision.reason)
        stopwatch.lap("evaluate")
        return _report_export_promote(cfg, stop, stopwatch, reports, run_dir, scratch, dataset, test, result,
                                      observer, metrics_args, decision, turn)


SKIPPED_FILE = "skipped.json"  # in a run directory that ended before training (nothing new)


def _skipped(cfg: TrainConfig, run_dir: RunDir, scratch: Path, dataset, reason: str, chief: bool) -> dict:
    """End a run that has nothing new to train: exit 0, on record in the run directory (jobs runs
    shows it as skipped) and in the promotion history."""
    log.info("%s", reason)
    if not chief:
        return {"skipped": reason}
    recipe = cfg.recipe_fingerprint()
    record = {"format": 1, "state": "skipped", "reason": reason,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "data_fingerprint": dataset.fingerprint, "recipe_fingerprint": recipe,
              "promote_to": cfg.promote_to}
    (run_dir.local / SKIPPED_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    run_dir.push(SKIPPED_FILE)
    promotions.note(cfg.promote_to, scratch / "promote", cfg.output,
                    {"decision": "skipped", "reason": reason,
                     "fingerprints": {"data": dataset.fingerprint, "recipe": recipe}})
    return {"skipped": reason}


def _metrics_args(cfg: TrainConfig, dataset, runtime, trainer, init_weights, result, test: dict,
                  observer: RunObserver, save_timer: SaveTimer, run_log, wall_start: float) -> dict:
    """The facts ``trainer.report.metrics`` turns into metrics.json (chief only, after evaluation)."""
    return {
        "class_names": list(dataset.class_names),
        "y_true": test["labels"],
        "y_pred": test["probs"].argmax(-1),
        "test_loss": test["loss"],
        "history": result.history,
        "epochs_completed": result.epochs_completed,
        "extra": {
            "model": cfg.model,
            "dataset": dataset.description,
            "num_train_images": len(dataset.train),
            "num_val_images": len(dataset.val),
            "skipped_images": dataset.skipped_images,
            "workers": runtime.workers,
            "replicas": runtime.replicas,
            "device": runtime.device_kind,
            "precision": runtime.precision,
            "precision_reason": runtime.reason,
            "global_batch_size": trainer.global_batch,
            "images_per_second": result.images_per_second,
            "resumed_from": list(result.resumed_from) if result.resumed_from else None,
            "initialization": init_weights.describe(cfg.model),
            "initial_weights": init_weights.to_dict(),
            "selected_epoch": result.selected_epoch,
            "selected_because": result.selection,
            "auto_reasons": cfg.auto_reasons,
            "train_seconds": result.train_seconds,
            "wall_seconds": time.monotonic() - wall_start,
            "output": cfg.output,
            "cost": observer.cost(runtime.device_kind, runtime.replicas, result.train_seconds),
            "checkpoint_seconds": save_timer.summary(),
            "storage_retries": storage_retries(),
            "log": run_log.rel,
        },
    }


def _report_export_promote(cfg: TrainConfig, stop, stopwatch: Stopwatch, reports: ReportWorker,
                           run_dir: RunDir, scratch: Path, dataset, test: dict, result,
                           observer: RunObserver, metrics_args: dict, decision,
                           turn: promotions.Turn | None) -> dict:
    """Report (in the worker process) and export (here) at once, publish both, then promote."""

    shown = len(test["images"])  # the first test images, in order, for the predictions grid
    report_args = {"images": test["images"], "probs": test["probs"][:shown],
                   "y_true": test["labels"][:shown], "config": cfg.to_dict()}

    def report_into(directory: Path) -> None:  # promotion: drawn again with the final metrics
        write_report(directory, metrics=metrics, **report_args)

    def model_into(directory: Path) -> None:
        export_model(result.model, list(dataset.class_names), cfg.image_size, cfg.model, directory)
        save_backbone_weights(result.model, directory / "backbone.weights.h5")  # for weights: <file>

    stop.enter("report")
    observer.ledger.enter("reporting")
    report_dir = run_dir.staging("report")
    drawing = reports.submit(report_dir, {"metrics": metrics_args, "report": report_args})
    if cfg.export:  # while the report is drawn in the worker process
        stop.enter("export")
        model_dir = run_dir.staging("model")
        model_into(model_dir)
        stopwatch.lap("export")
    metrics, report_seconds = drawing.result()
    stopwatch.add("report", report_seconds)
    metrics["phase_seconds"] = stopwatch.as_dict()
    metrics["ledger"] = observer.ledger.summary()
    (report_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n",
                                           encoding="utf-8")
    run_dir.publish(report_dir, "report")
    observer.finished(metrics, run_dir.local / "report")
    log.info("test accuracy %.4f, test loss %.4f; report: %s", metrics["test_accuracy"],
             metrics["test_loss"], run_dir.uri_of("report/report.html"))
    log.info("phases (s): %s", ", ".join(f"{k} {v:.1f}" for k, v in metrics["phase_seconds"].items()))
    log.info("ledger: %s", describe_ledger(metrics["ledger"]))

    if cfg.export:
        run_dir.publish(model_dir, "model")
        log.info("model: %s", run_dir.uri_of("model"))
    if decision is None:
        return metrics
    if decision.promote and not turn.still_held():  # held over STALE_SECONDS and broken
        decision = dataclasses.replace(decision, promote=False, reason=(
            f"not promoted: this run's promotion lock of {cfg.promote_to} was broken as stale by "
            f"another run before it published (it had held it over {promotions.STALE_SECONDS:.0f} s)"))
        log.warning("%s", decision.reason)
    if decision.promote:
        stop.enter("promotion")
        # The exported model's own files (export is on with promote_to): the served model.keras
        # is byte for byte the one this run published, as its fingerprint in the history says.
        promote.publish(cfg.promote_to, scratch / "promote",
                        lambda d: shutil.copytree(run_dir.local / "model", d, dirs_exist_ok=True),
                        report_into, promote.evaluation_record(cfg, dataset, decision))
    promotions.record(turn, promotions.history_entry(
        decision, promotions.sha256_of(run_dir.local / "model" / "model.keras")))
    return metrics
