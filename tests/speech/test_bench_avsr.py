"""benchmarks/bench_avsr.py's summary over noise draws: mean CER per cell and the AV model's gain
over audio alone (from the mean CERs, and per draw)."""

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_avsr.py"
    spec = importlib.util.spec_from_file_location("bench_avsr", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(modality, snr, seed, cer, model="m", method="ctc_attention"):
    return {"model": model, "method": method, "modality": modality, "snr": snr, "noise_seed": seed, "cer": cer}


def test_gain_of_the_means_and_per_draw(bench):
    rows = [_row("av", "clean", 0, 0.06), _row("audio", "clean", 0, 0.07), _row("video", "clean", 0, 0.45),
            _row("av", "0", 0, 0.10), _row("audio", "0", 0, 0.16),
            _row("av", "0", 1000, 0.12), _row("audio", "0", 1000, 0.14),
            _row("av", "-5", 0, 0.2)]                       # no audio row at -5 dB: no gain there
    (g,) = bench.gains(rows)
    assert (g["snr"], g["method"]) == ("0", "ctc_attention")
    assert g["av"] == pytest.approx(0.11) and g["audio"] == pytest.approx(0.15)
    assert g["gain"] == pytest.approx(1 - 0.11 / 0.15)
    assert g["per_draw"] == pytest.approx([1 - 0.10 / 0.16, 1 - 0.12 / 0.14])
    table = bench.markdown(rows, ["m"], ["ctc_attention"])
    assert "mean CER over 2 noise draws" in table
    assert "| ctc_attention | av | 6.0 |  | 11.0 | 20.0 |" in table
    assert "| m | ctc_attention | 0 dB | 11.00 | 15.00 | 26.7 % (37.5 / 14.3) |" in table


def test_one_draw_keeps_the_plain_table(bench):
    rows = [_row("av", "0", 0, 0.10), _row("audio", "0", 0, 0.20)]
    table = bench.markdown(rows, ["m"], ["ctc_attention"])
    assert "noise draws" not in table and "50.0 % (50.0) |" in table


def test_a_draw_without_its_av_row_has_no_per_draw_gain(bench):
    rows = [_row("av", "0", 0, 0.10), _row("audio", "0", 0, 0.20), _row("audio", "0", 1000, 0.20)]
    (g,) = bench.gains(rows)
    assert g["per_draw"] == pytest.approx([0.5]) and g["gain"] == pytest.approx(0.5)
