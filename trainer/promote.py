"""Promotion: publish a run's model and report to a serving location only if it is better.

Nightly retraining picks up new data; the model it serves must never get worse, and a better
one must not be held back by an unfair comparison. With ``promote_to: URI`` the run compares
its model (the challenger) with the one at ``URI/model/`` (the served model):

1. **On images neither model trained on.** The challenger never trained on its own test split.
   The served model carries ``model/evaluation.json``, written when it was promoted: the split
   rule of its run (``data.split_rule``) and the keys of its test images. A test image of this
   run is compared only when the served model did not train or validate on it: it is in that
   list, or the served run's rule puts it into test (an image added since). Splits are a hash
   of each file's path (``data.assign_splits``), so with unchanged fractions and seed that is
   the whole test split, and a grown dataset never scores the served model on its own training
   images. A served model without the record (promoted by hand or by an older version) is
   compared on the whole test split and the comparison is marked unverified: that can only
   favour the served model.
2. **By a margin that is not noise.** McNemar's exact test on per-image correctness: of the
   images where exactly one model is right, the challenger must win significantly more
   (one-sided binomial p < ``promotion_alpha``). Equal models do not swap back and forth.
3. **Without sacrificing a class.** No class's recall may drop by more than
   ``promotion_max_recall_drop``.

The decision, the test statistic, per-class recall deltas and both confusion matrices go into
``report/metrics.json`` under ``promotion``; ``report.html`` shows them ("vs the served model").
A served model with other classes or another input size cannot be compared and is left in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trainer.data.dataset import never_trained_on
from trainer.promotions import sha256_of
from trainer.storage import open_run_dir

log = logging.getLogger(__name__)

RECORD_FILE = "evaluation.json"  # inside model/: what the promoted model was judged on
RECORD_FORMAT = 1


@dataclass(frozen=True)
class Decision:
    target: str
    promote: bool
    reason: str
    new_accuracy: float  # both accuracies on the comparison images
    current_accuracy: float | None = None
    comparison: dict = field(default_factory=dict)  # images compared, fingerprint, fairness
    mcnemar: dict = field(default_factory=dict)
    per_class: dict = field(default_factory=dict)  # class -> served/new recall, delta
    confusion_matrices: dict = field(default_factory=dict)  # served, new (rows = true class)
    max_recall_drop: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def fingerprint(keys) -> str:
    """A short, order-independent fingerprint of a set of image keys."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    return f"sha256:{digest[:16]}"


def evaluation_record(cfg, dataset, decision: Decision) -> dict:
    """What is stored with a promoted model (``model/evaluation.json``) so that the next run can
    compare against it fairly: its run's split rule, its test images, what it was judged on."""
    test_keys = sorted(dataset.test.keys or ())
    compared = decision.comparison or {}
    return {
        "format": RECORD_FORMAT,
        "data": cfg.data,
        "run": cfg.output,
        "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_fingerprint": dataset.fingerprint,  # with the recipe's: what skip_unchanged compares
        "recipe_fingerprint": cfg.recipe_fingerprint(),
        "split_rule": dataset.split_rule,
        "test_keys": test_keys,
        "test_fingerprint": fingerprint(test_keys),
        "judged_on": {"num_images": compared.get("num_images"),
                      "fingerprint": compared.get("fingerprint"),
                      "reason": decision.reason},
    }


MAX_INFO_BYTES = 1 << 20
MAX_RECORD_BYTES = 256 << 20  # the test keys of a large dataset


def served_json(path: Path, max_bytes: int) -> tuple[dict | None, str]:
    """(the JSON object in ``path``, "") or (None, what is wrong with it): the served model's
    files come from outside this run and are checked before use (size, UTF-8, depth, a mapping)."""
    try:
        if path.stat().st_size > max_bytes:
            return None, f"is larger than {max_bytes >> 20} MiB"
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except RecursionError:
        return None, "is nested too deeply"
    except ValueError as exc:
        return None, f"is not JSON ({str(exc)[:80]})"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    return (value, "") if isinstance(value, dict) else (None, "is not a JSON object")


def _record_problem(record: dict | None) -> str:
    """What is wrong with the shape of a served evaluation record ("" when nothing)."""
    if record is None:
        return ""
    keys, rule = record.get("test_keys"), record.get("split_rule")
    if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        return "has a key 'test_keys' that is not a list of strings"
    if rule is not None and not isinstance(rule, dict):
        return "has a key 'split_rule' that is not a mapping"
    for name, kinds in (("seed", int), ("val_fraction", (int, float)), ("test_fraction", (int, float))):
        value = (rule or {}).get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            return f"has a key 'split_rule.{name}' of the wrong type ({str(value)[:40]!r})"
    return ""


def nothing_new(cfg, scratch: Path, dataset) -> str:
    """Why this run would train nothing new ("" when it has something new): the served model's
    record names the same dataset fingerprint and the same recipe (``skip_unchanged``)."""
    target = open_run_dir(cfg.promote_to, scratch, key="promote_to", recover=False)
    if not dataset.fingerprint or not target.pull(f"model/{RECORD_FILE}"):
        return ""
    record, problem = served_json(target.local / "model" / RECORD_FILE, MAX_RECORD_BYTES)
    if record is None or problem:
        return ""  # a record that cannot be read: train, and let the comparison say why
    if (record.get("data_fingerprint") != dataset.fingerprint
            or record.get("recipe_fingerprint") != cfg.recipe_fingerprint()):
        return ""
    by = record.get("run") if isinstance(record.get("run"), str) else "an earlier run"
    when = record.get("promoted_at") if isinstance(record.get("promoted_at"), str) else "earlier"
    return (f"nothing new: the dataset ({dataset.fingerprint[:23]}...) and the recipe are those of the "
            f"model served at {cfg.promote_to} (promoted {when} by {by}); skipped before training "
            "(skip_unchanged: false trains anyway)")


def comparison_mask(keys: tuple[str, ...] | None, record: dict | None) -> tuple[np.ndarray | None, dict]:
    """Which of this run's test images the served model never trained on (None: all, unverified)."""

    if record is None:
        return None, {"fair": False, "note": "the served model has no evaluation record (promoted "
                      "by hand or by an older version): its training images are unknown, so it "
                      "was compared on the whole test split, which can only favour it"}
    if keys is None:
        return None, {"fair": False, "note": "this dataset's test images have no keys (packed): "
                      "compared on the whole test split"}
    served_test = set(record.get("test_keys") or ())
    rule = record.get("split_rule") or {}
    mask = np.array([k in served_test or bool(never_trained_on(k, rule)) for k in keys], bool)
    dropped = int((~mask).sum())
    note = (f"both models evaluated on the same {int(mask.sum())} test images, none of which "
            "either model trained on")
    if dropped:
        note += f" ({dropped} test images of this run left out: the served model trained on them)"
    return mask, {"fair": True, "note": note, "left_out": dropped,
                  "also_in_served_test_split": int(sum(k in served_test for k in keys))}


def mcnemar(new_ok: np.ndarray, old_ok: np.ndarray) -> dict:
    """McNemar's exact test: is the challenger right on significantly more discordant images?"""
    from scipy.stats import binomtest

    b = int(np.sum(new_ok & ~old_ok))  # only the challenger is right
    c = int(np.sum(~new_ok & old_ok))  # only the served model is right
    n = b + c
    p = float(binomtest(b, n, 0.5, alternative="greater").pvalue) if n else 1.0
    chi2 = (abs(b - c) - 1) ** 2 / n if n else 0.0  # the continuity-corrected statistic
    return {"only_new_right": b, "only_served_right": c, "discordant": n, "statistic": chi2,
            "p_value": p, "test": "McNemar exact (one-sided binomial on discordant pairs)"}


def _recall(y_true: np.ndarray, y_pred: np.ndarray, cls: int) -> float | None:
    support = int(np.sum(y_true == cls))
    return float(np.sum((y_true == cls) & (y_pred == cls)) / support) if support else None


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> list[list[int]]:
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm.tolist()


def decide(cfg, scratch: Path, dataset, y_true: np.ndarray, new_pred: np.ndarray,
           predict_current) -> Decision:
    """Compare with the model at ``cfg.promote_to``; ``predict_current(model)`` returns its
    predicted class for every test image, in order."""
    import keras

    target_uri = cfg.promote_to
    class_names = list(dataset.class_names)
    target = open_run_dir(target_uri, scratch)
    overall = float(np.mean(new_pred == y_true)) if len(y_true) else 0.0
    if not (target.pull("model/model_info.json") and target.pull("model/model.keras")):
        return Decision(target_uri, True, "no model there yet", overall)
    served = {"served_model": sha256_of(target.local / "model" / "model.keras")}  # for the history
    info, problem = served_json(target.local / "model" / "model_info.json", MAX_INFO_BYTES)
    if info is None:
        return Decision(target_uri, False, f"the served model's model/model_info.json {problem}: not "
                        "promoted (fix or remove the served model to promote by hand)", overall,
                        comparison=served)
    if info.get("class_names") != class_names or info.get("image_size") != cfg.image_size:
        return Decision(target_uri, False, "the current model has other classes or another input size; "
                        "promote by hand if intended", overall, comparison=served)
    record = None
    if target.pull(f"model/{RECORD_FILE}"):
        record, problem = served_json(target.local / "model" / RECORD_FILE, MAX_RECORD_BYTES)
        problem = problem or _record_problem(record)
        if problem:
            record = None  # compared on the whole test split: that can only favour the served model
            log.warning("%s/model/%s %s: comparing without it", target_uri, RECORD_FILE, problem)
    try:
        mask, comparison = comparison_mask(dataset.test.keys, record)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a record of a foreign shape
        log.warning("%s/model/%s does not fit (%s): comparing without it", target_uri, RECORD_FILE, exc)
        mask, comparison = comparison_mask(dataset.test.keys, None)
    if mask is None:
        mask = np.ones(len(y_true), bool)
    keys = dataset.test.keys
    compared = [k for k, m in zip(keys, mask) if m] if keys is not None else None
    comparison.update(num_images=int(mask.sum()),
                      fingerprint=fingerprint(compared) if compared is not None else None, **served)

    try:
        current = keras.saving.load_model(target.local / "model" / "model.keras")
        old_pred = np.asarray(predict_current(current))
        if old_pred.shape != new_pred.shape:
            raise ValueError(f"it predicted {old_pred.shape[0] if old_pred.ndim else 0} classes for "
                             f"{new_pred.shape[0]} images")
    except Exception as exc:  # noqa: BLE001 - a foreign or damaged file: any error means "cannot use it"
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        return Decision(target_uri, False, f"the served model/model.keras cannot be used ({reason}): "
                        "not promoted (fix or remove the served model to promote by hand)", overall,
                        comparison=comparison)
    verdict = judge(y_true[mask], new_pred[mask], old_pred[mask], class_names,
                    cfg.promotion_alpha, cfg.promotion_max_recall_drop)
    return Decision(target_uri, comparison=comparison, **verdict)


def judge(y: np.ndarray, new_p: np.ndarray, old_p: np.ndarray, class_names: list[str],
          alpha: float, max_recall_drop: float) -> dict:
    """The decision on the comparison images (a pure function): McNemar, then the recall guard."""
    new_ok, old_ok = new_p == y, old_p == y
    new_acc = float(new_ok.mean()) if len(y) else 0.0
    old_acc = float(old_ok.mean()) if len(y) else 0.0
    test = {**mcnemar(new_ok, old_ok), "alpha": alpha}
    per_class, dropped = {}, []
    for i, name in enumerate(class_names):
        r_new, r_old = _recall(y, new_p, i), _recall(y, old_p, i)
        if r_new is None:
            continue
        delta = r_new - r_old
        per_class[name] = {"served_recall": r_old, "new_recall": r_new, "delta": delta,
                           "support": int(np.sum(y == i))}
        if delta < -max_recall_drop - 1e-12:
            dropped.append(f"{name!r} {r_old:.3f} -> {r_new:.3f}")
    summary = (f"accuracy {new_acc:.4f} vs the served model's {old_acc:.4f} on {len(y)} images; "
               f"only the new model right on {test['only_new_right']}, only the served one on "
               f"{test['only_served_right']}, McNemar p={test['p_value']:.3g}")
    if not len(y):
        promote, reason = False, "no test image that neither model trained on: nothing to compare"
    elif dropped:
        promote = False
        reason = f"recall drops by more than {max_recall_drop} for class {', '.join(dropped)}; {summary}"
    elif test["p_value"] >= alpha:
        promote, reason = False, f"not significantly better (p >= {alpha}): {summary}"
    else:
        promote, reason = True, f"significantly better (p < {alpha}): {summary}"
    matrices = {"served": _confusion(y, old_p, len(class_names)),
                "new": _confusion(y, new_p, len(class_names))}
    return {"promote": promote, "reason": reason, "new_accuracy": new_acc,
            "current_accuracy": old_acc, "mcnemar": test, "per_class": per_class,
            "confusion_matrices": matrices, "max_recall_drop": max_recall_drop}


def publish(target_uri: str, scratch: Path, write_model, write_report, record: dict) -> None:
    """Write the model (with its evaluation record) and the report into staging at the target,
    then publish each whole."""
    target = open_run_dir(target_uri, scratch)

    def model_with_record(directory: Path) -> None:
        write_model(directory)
        (directory / RECORD_FILE).write_text(json.dumps(record, indent=1))

    for rel, write in (("model", model_with_record), ("report", write_report)):
        staging = target.staging(rel)
        write(staging)
        target.publish(staging, rel)
    log.info("promoted the model and report to %s", target_uri)


def predictions_of(model, batches) -> np.ndarray:
    """Top-1 predicted class of ``model`` for every image of ``(images, labels)`` batches."""
    out = []
    for images, _labels in batches:
        probs = model(np.asarray(images, np.float32), training=False)
        out.append(np.asarray(probs).argmax(-1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)
