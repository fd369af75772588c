"""The verification-curve tool: interleaved calibration of a target as loaded and as prepared."""

import itertools

from tiny_models import make_target

from diffuspec.loop import CALIBRATION_SIZES
from diffuspec.precision import prepare_target
from diffuspec.verification_curve import format_table, measure_curves, medians


def test_every_target_gets_every_size_once_per_round(tokenizer):
    targets = {"none": make_target("gemma3", len(tokenizer)),
               "int8": prepare_target(make_target("gemma3", len(tokenizer)), "int8")}
    ticks = itertools.count()
    samples = measure_curves(targets, context=12, largest=9, rounds=2, clock=lambda: float(next(ticks)))
    sizes = [s for s in CALIBRATION_SIZES if s <= 9]
    assert {name: sorted(by) for name, by in samples.items()} == {"none": sizes, "int8": sizes}
    assert all(times == [1.0, 1.0] for by in samples.values() for times in by.values())  # one tick per pass


def test_table_gives_milliseconds_and_the_ratio_to_one_token():
    table = format_table(medians({"int8": {1: [0.04, 0.05, 0.06], 17: [0.10]}}))
    assert table.splitlines()[1].split() == ["int8", "ms", "50.0", "100.0"]
    assert table.splitlines()[2].split() == ["int8", "/", "1", "tok", "1.00", "2.00"]
