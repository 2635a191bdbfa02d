"""The per-machine precision/XLA decision: a pure function of CPU flags, GPU capabilities, config."""

from __future__ import annotations

import json

import pytest

from trainer.runtime.precision import Machine, cache_key, cached_calibration, decide, parse_cpuinfo

# /proc/cpuinfo excerpts of real machines (flags trimmed to the relevant ones plus neighbours).
EPYC_WITH_BF16 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
"""
EPYC_WITHOUT_BF16 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx avx2 fma sha_ni vaes
"""
XEON_AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp sve bf16 i8mm
CPU implementer\t: 0x41
"""


def machine(text: str, gpus=()) -> Machine:
    model, flags = parse_cpuinfo(text)
    return Machine(model, flags, "x86_64", tuple(gpus))


def test_parse_cpuinfo_reads_model_and_flags():
    model, flags = parse_cpuinfo(XEON_AMX)
    assert model.startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert {"amx_bf16", "avx512_bf16", "avx2"} <= flags
    assert "bf16" in parse_cpuinfo(GRAVITON3)[1]


@pytest.mark.parametrize("text, precision, why", [
    (XEON_AMX, "mixed_bfloat16", "amx_bf16 (bf16 matrix units)"),
    (EPYC_WITHOUT_BF16, "float32", "no bf16 units"),
], ids=["xeon-amx", "epyc-no-bf16"])
def test_cpu_auto_follows_the_bf16_flags(text, precision, why):
    choice = decide(machine(text))
    assert choice.precision == precision
    assert why in choice.reason
    assert choice.jit_compile is False and not choice.calibrate


@pytest.mark.parametrize("text, flag", [(EPYC_WITH_BF16, "avx512_bf16"), (GRAVITON3, "bf16")],
                         ids=["epyc-avx512_bf16-no-amx", "graviton3"])
def test_cpu_with_an_unsure_flag_asks_for_calibration_then_follows_it(text, flag):
    """avx512_bf16 without AMX measured 0.86x on one CPU and ~2x on another: measured, not assumed."""
    m = machine(text)
    first = decide(m)
    assert first.calibrate and first.precision == "float32"
    assert f"{flag} but no amx_bf16" in first.reason
    fast = decide(m, calibration=1.9)
    assert fast.precision == "mixed_bfloat16" and "1.90x" in fast.reason and not fast.calibrate
    slow = decide(m, calibration=0.86)
    assert slow.precision == "float32" and "0.86x" in slow.reason and not slow.calibrate
    assert decide(m, calibration=1.05).precision == "float32"  # not worth the lower precision


@pytest.mark.parametrize("caps, precision", [
    ([(8, 0)], "mixed_bfloat16"),  # A100
    ([(9, 0), (9, 0)], "mixed_bfloat16"),  # H100 x2
    ([(7, 0)], "mixed_float16"),  # V100
    ([(7, 5)], "mixed_float16"),  # T4
    ([(8, 6), (7, 5)], "mixed_float16"),  # mixed pod: the slowest GPU decides
    ([(6, 0)], "float32"),  # P100: no tensor cores
], ids=["a100", "h100x2", "v100", "t4", "mixed", "p100"])
def test_gpu_auto_follows_compute_capability(caps, precision):
    choice = decide(machine(EPYC_WITHOUT_BF16, caps))
    assert choice.precision == precision
    assert choice.jit_compile is True
    assert "compute capability" in choice.reason


def test_config_values_win_over_the_rules():
    choice = decide(machine(XEON_AMX), precision="float32", jit_compile="on")
    assert (choice.precision, choice.jit_compile) == ("float32", True)
    assert "set in config" in choice.reason and "XLA on in config" in choice.reason
    gpu = decide(machine(EPYC_WITH_BF16, [(8, 0)]), precision="mixed_float16", jit_compile="off")
    assert (gpu.precision, gpu.jit_compile) == ("mixed_float16", False)


def test_calibration_is_cached_per_cpu_model_and_tf_version(tmp_path):
    calls = []

    def measure():
        calls.append(1)
        return 1.7

    m = machine(GRAVITON3)
    assert cached_calibration(tmp_path, m, "2.21.0", measure) == 1.7
    assert cached_calibration(tmp_path, m, "2.21.0", measure) == 1.7
    assert len(calls) == 1  # measured once, then read back
    cached_calibration(tmp_path, m, "2.22.0", measure)  # another TF version: measured again
    assert len(calls) == 2
    assert cache_key(m, "2.21.0") != cache_key(machine(EPYC_WITH_BF16), "2.21.0")
    path = tmp_path / f"precision-{cache_key(m, '2.21.0')}.json"
    assert json.loads(path.read_text())["bf16_over_float32"] == 1.7
    path.write_text("{not json")  # a corrupt cache entry is measured again, not fatal
    assert cached_calibration(tmp_path, m, "2.21.0", measure) == 1.7
    assert len(calls) == 3


def test_calibration_measures_this_cpu_once_and_decides_from_it(tmp_path, monkeypatch):
    """The real calibration on this machine, as a CPU with avx512_bf16 and no AMX would run it."""
    from trainer.config import load_config
    from trainer.runtime import precision
    from trainer.runtime.devices import choose_precision

    monkeypatch.setattr(precision, "observe", lambda gpus=None: machine(EPYC_WITH_BF16))
    monkeypatch.delenv("KUBETRAIN_PRECISION_CACHE", raising=False)  # the scratch cache given here
    cfg = load_config({"data": "builtin:digits", "output": str(tmp_path / "out")})
    first = choose_precision(cfg, [], tmp_path)
    (cached,) = tmp_path.glob("precision-*.json")
    ratio = json.loads(cached.read_text())["bf16_over_float32"]
    assert ratio > 0
    assert first.precision == ("mixed_bfloat16" if ratio >= precision.CALIBRATION_WIN else "float32")
    assert f"measured: bf16 trains {ratio:.2f}x float32 here" in first.reason

    def no_second_measurement():
        raise AssertionError("measured again: the cache was not used")

    monkeypatch.setattr(precision, "measure_bf16_ratio", no_second_measurement)
    assert choose_precision(cfg, [], tmp_path) == first
    monkeypatch.setenv("KUBETRAIN_PRECISION_CACHE", str(tmp_path))  # a shared cache: the same file
    assert choose_precision(cfg, [], tmp_path / "another-scratch") == first


def test_training_rates_and_matmul_rates_are_measured_per_precision():
    from trainer.runtime.precision import matmul_gflops, training_rates

    rates = training_rates(rounds=1, steps=2, image_size=16, batch=8)
    assert set(rates) == {"float32", "mixed_bfloat16"} and min(rates.values()) > 0
    assert matmul_gflops("float32", n=256, repeats=2) > 0.1
    assert matmul_gflops("bfloat16", n=256, repeats=2) > 0.01
