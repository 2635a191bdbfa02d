"""Fixed costs: the training and evaluation functions are traced once per run, not per epoch,
split or batch shape (every retrace costs ~0.3-2 s of a short run)."""

from __future__ import annotations

import pytest

from trainer.config import load_config


@pytest.mark.parametrize("shared", [True, False], ids=["small-splits-share-one-function", "large-splits"])
def test_two_epochs_and_three_splits_trace_each_function_once(tmp_path, monkeypatch, shared):
    """Small splits (digits) all evaluate through the one collecting function; above
    SHARED_EVAL_TRACE_MAX_PROBS the per-epoch splits use the summing one, test the collecting one."""
    from trainer.core.preemption import StopRequest
    from trainer.data.dataset import load_dataset
    from trainer.runtime.devices import make_runtime
    from trainer.storage import LocalRunDir
    from trainer.training import loop as train
    from trainer.training.checkpoint import Checkpointer
    from trainer.training.loop import Trainer

    if not shared:
        monkeypatch.setattr(train, "SHARED_EVAL_TRACE_MAX_PROBS", 0)
    # batch 100: every split ends in a partial batch of another shape
    cfg = load_config({"data": "builtin:digits", "output": str(tmp_path), "model": "seed_cnn",
                       "epochs": 2, "batch_size": 100, "image_size": 16, "steps_per_execution": 4})
    trainer = Trainer(cfg, make_runtime(cfg), load_dataset(cfg, None))
    trainer.fit(Checkpointer(LocalRunDir(str(tmp_path)), trainer.model, trainer.optimizer, keep=1), StopRequest())
    trainer.evaluate("test", collect=True)
    trainer.evaluate("train")
    assert trainer._train_chunk.experimental_get_tracing_count() == 1
    sums, gather = trainer._evaluator._sums_step, trainer._evaluator._gather_step
    if shared:
        assert sums.experimental_get_tracing_count() == 0
        assert gather.experimental_get_tracing_count() == 1  # val x2, test, train
    else:
        assert sums.experimental_get_tracing_count() == 1  # val x2, train
        assert gather.experimental_get_tracing_count() == 1  # test
