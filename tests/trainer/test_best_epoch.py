"""The best validation epoch's weights are the ones evaluated and exported (trainer/training/best.py)."""

from __future__ import annotations

import pytest

from .test_training import _cfg, _checkpointer, _trainer


@pytest.mark.parametrize("mode", ["best", "last"])
def test_fit_returns_the_selected_epochs_weights(tmp_path, mode):
    from trainer.core.preemption import StopRequest

    cfg = _cfg(tmp_path, epochs=3, export_epoch=mode, lr_schedule="constant", learning_rate=0.01)
    trainer = _trainer(cfg)
    result = trainer.fit(_checkpointer(trainer, tmp_path), StopRequest())
    acc = result.history["val_accuracy"]
    expected = (max(range(3), key=lambda i: (acc[i], -result.history["val_loss"][i], -i)) + 1
                if mode == "best" else 3)
    assert result.selected_epoch == expected and str(expected) in result.selection
    # the model now holds that epoch's weights: its validation accuracy is that epoch's
    assert trainer.evaluate("val")["accuracy"] == pytest.approx(acc[expected - 1], abs=1e-6)
    best_files = list((tmp_path / "checkpoints").glob("best-*.weights.h5"))
    assert len(best_files) == 1  # only the current best is kept
