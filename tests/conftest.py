"""Suite-wide settings for every test and every trainer process it starts."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_precision_calibration(tmp_path_factory):
    """One bf16-vs-float32 calibration for the whole session (trainer.runtime.devices,
    KUBETRAIN_PRECISION_CACHE): on a CPU where ``precision: auto`` measures, two runs compared
    in a test (clean vs resumed, clean vs through storage faults) must not land on opposite
    sides of the bar because the machine was busier during one of them. Where a test sets
    the variable itself, its value stands."""
    if "KUBETRAIN_PRECISION_CACHE" in os.environ:
        yield
        return
    os.environ["KUBETRAIN_PRECISION_CACHE"] = str(tmp_path_factory.mktemp("precision"))
    try:
        yield
    finally:
        os.environ.pop("KUBETRAIN_PRECISION_CACHE", None)
