"""Length distributions: the one parser (good and bad specs), seeded per-index sampling, bounds,
and each distribution's mean and spread against its definition (two-sided, in standard errors)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.errors import InputError
from harness.workload import LengthSpecError, WorkloadSpec, length_option, parse_length

N = 200_000
IDX = np.arange(N)


@pytest.mark.parametrize(
    ("spec", "kind", "params"),
    [
        ("256", "fixed", (256,)),
        (256, "fixed", (256,)),
        (" 128:512 ", "uniform", (128, 512)),
        ("7:7", "uniform", (7, 7)),
        ("normal:256,64", "normal", (256.0, 64.0)),
        ("normal:256.5,0", "normal", (256.5, 0.0)),
        ("lognormal:256,64", "lognormal", (256.0, 64.0)),
        ("list:64,128,256", "list", (64, 128, 256)),
        ("list: 5 , 5", "list", (5, 5)),
    ],
)
def test_parser_accepts_the_contract_spellings(spec: str | int, kind: str, params: tuple[float, ...]) -> None:
    d = parse_length(spec)
    assert d.kind == kind and d.params == params


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0", "at least 1"),
        ("-5", "expected a length like"),
        ("abc", "expected a length like"),
        ("", "expected a length like"),
        ("12.5", "expected a length like"),
        ("512:128", "1 <= LO <= HI"),
        ("0:10", "1 <= LO <= HI"),
        ("128:", "expected a length like"),
        ("normal:256", "normal:MEAN,STDDEV"),
        ("normal:0.5,1", "MEAN >= 1"),
        ("lognormal:a,b", "normal:MEAN,STDDEV"),
        ("normal:256,-1", "normal:MEAN,STDDEV"),
        ("list:", "list: followed by"),
        ("list:1,0", "every length >= 1"),
        ("list:1,,2", "list: followed by"),
        ("uniform:1,2", "expected a length like"),
        (True, "expected a length like"),
    ],
)
def test_parser_rejects_bad_specs_with_what_was_expected(spec: str, expected: str) -> None:
    with pytest.raises(LengthSpecError, match=expected):
        parse_length(spec)


def test_flag_and_scenario_errors_name_where() -> None:
    with pytest.raises(InputError) as exc:
        length_option("normal:256", "--input-tokens")
    msg = str(exc.value)
    assert msg.startswith("--input-tokens: ") and "normal:MEAN,STDDEV" in msg and "\n" not in msg
    with pytest.raises(ValueError, match=r"output_tokens\n.*expected a length like"):
        WorkloadSpec.model_validate({"output_tokens": "lots"})


@pytest.mark.parametrize("spec", ["256", "128:512", "normal:256,64", "lognormal:256,64", "list:64,128,256"])
def test_sampling_is_a_function_of_seed_stream_and_index(spec: str) -> None:
    d = parse_length(spec)
    a = d.sample(7, "input", IDX[:5000])
    assert np.array_equal(a, d.sample(7, "input", IDX[:5000]))
    # Any subset of indices, in any order, draws the same values: what lets workers split the sequence.
    sub = IDX[1:5000:3][::-1]
    assert np.array_equal(d.sample(7, "input", sub), a[sub])
    assert d.sample_one(7, "input", 4321) == a[4321]
    if d.kind != "fixed":
        assert not np.array_equal(a, d.sample(8, "input", IDX[:5000])), "another seed, another sequence"
        assert not np.array_equal(a, d.sample(7, "output", IDX[:5000])), "another stream, another sequence"


def _mean_within(x: np.ndarray, mean: float, sd: float, k: float = 5.0) -> None:
    se = sd / math.sqrt(len(x))
    assert abs(x.mean() - mean) < k * se + 0.5 / math.sqrt(len(x)), (x.mean(), mean, se)


def test_fixed() -> None:
    x = parse_length("256").sample(1, "s", IDX)
    assert (x == 256).all()


def test_uniform_covers_both_ends_and_nothing_else() -> None:
    d = parse_length("128:512")
    x = d.sample(1, "s", IDX)
    assert x.min() == 128 and x.max() == 512
    counts = np.bincount(x - 128, minlength=385)
    assert (counts > 0).all(), "every integer in the range is drawn"
    _mean_within(x, 320, d.stddev)
    assert abs(x.std() - d.stddev) / d.stddev < 0.02
    # Chi-square against uniform: 384 degrees of freedom, mean 384, sd ~27.7; 6 sd either side.
    exp = N / 385
    chi2 = float(((counts - exp) ** 2 / exp).sum())
    assert 384 - 6 * 27.7 < chi2 < 384 + 6 * 27.7, chi2


def test_normal_mean_spread_and_clip_at_one() -> None:
    d = parse_length("normal:256,64")
    x = d.sample(1, "s", IDX)
    _mean_within(x, 256, 64)
    assert abs(x.std() - 64) / 64 < 0.02
    # Symmetric: as many draws below mean - sd as above mean + sd (binomial, 5 sd).
    lo, hi = (x < 256 - 64).sum(), (x > 256 + 64).sum()
    assert abs(lo - hi) < 5 * math.sqrt(lo + hi)
    # A spread that reaches 0: draws below 0.5 become 1, never 0 or negative; share as computed.
    wide = parse_length("normal:3,10")
    y = wide.sample(1, "s", IDX)
    assert y.min() == 1
    p_clip = wide.clip_probability()
    share = (y == 1).mean()
    p_one_unclipped = 0.5 * (
        math.erf((1.5 - 3) / (10 * math.sqrt(2))) - math.erf((0.5 - 3) / (10 * math.sqrt(2)))
    )
    p = p_clip + p_one_unclipped
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / N), (share, p)


def test_lognormal_has_the_asked_mean_and_stddev_of_lengths() -> None:
    d = parse_length("lognormal:256,64")
    x = d.sample(1, "s", IDX)
    assert x.min() >= 1
    _mean_within(x, 256, 64)
    assert abs(x.std() - 64) / 64 < 0.03
    # Right-skewed, unlike the normal: median below the mean (by about 7.7 for these numbers).
    med = float(np.median(x))
    assert 244 < med < 254, med


def test_list_draws_each_value_equally() -> None:
    d = parse_length("list:64,128,256")
    x = d.sample(1, "s", IDX)
    assert set(np.unique(x).tolist()) == {64, 128, 256}
    for v in (64, 128, 256):
        share = (x == v).mean()
        assert abs(share - 1 / 3) < 5 * math.sqrt((1 / 3) * (2 / 3) / N), (v, share)


def test_cap_bounds_every_kind() -> None:
    for spec in ("128:512", "normal:256,64", "lognormal:256,64", "list:64,128,256", "600"):
        x = parse_length(spec).sample(1, "s", IDX[:20000], cap=300)
        assert x.max() <= 300 and x.min() >= 1


def test_support_and_moments() -> None:
    assert parse_length("128:512").support == (128, 512)
    assert parse_length("list:64,8").support == (8, 64)
    assert parse_length("normal:256,64").support == (1, None)
    assert parse_length("normal:256,0").support == (1, 256)
    assert parse_length("list:64,128,256").mean == pytest.approx(448 / 3)
