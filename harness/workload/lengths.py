"""Length distributions for input and output tokens: one parser, seeded per-index sampling.

Spelling (the same on the command line and in the scenario's `workload` section, CONTRACT.md):

    256                 fixed
    128:512             uniform over the integers 128..512, both ends included
    normal:256,64       normal with mean 256 and standard deviation 64
    lognormal:256,64    log-normal whose *lengths* have mean 256 and standard deviation 64
    list:64,128,256     one of the listed lengths, each equally likely

Normal and log-normal draws are rounded to the nearest integer and then clipped: a draw below 1
becomes 1 (never redrawn), and with a `cap` (e.g. the model's context) a draw above it becomes the
cap. Clipping keeps every index's draw a pure function of (seed, index); the price is a small atom
at the bounds when the spread reaches them, which `LengthDist.clip_probability` states.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from harness.errors import InputError
from harness.workload._random import stream_key, uniforms

__all__ = ["LENGTH_SYNTAX", "LengthDist", "LengthSpecError", "length_option", "parse_length"]

LENGTH_SYNTAX = "a length like 256, 128:512 (uniform), normal:256,64, lognormal:256,64 or list:64,128,256"
Kind = Literal["fixed", "uniform", "normal", "lognormal", "list"]
_INT = r"\s*(\d+)\s*"
_NUM = r"\s*(\d+(?:\.\d*)?|\.\d+)\s*"


class LengthSpecError(ValueError):
    """A length spec that does not parse; the message says what was expected (no flag name)."""


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A parsed length distribution. `params`: fixed (n,), uniform (lo, hi), normal and lognormal
    (mean, stddev), list (values...)."""

    kind: Kind
    params: tuple[float, ...]
    spec: str

    # --- facts --------------------------------------------------------------------------------
    @property
    def support(self) -> tuple[int, int | None]:
        """Smallest and largest length a draw can give (None: unbounded above, before any cap)."""
        p = self.params
        if self.kind == "fixed":
            return int(p[0]), int(p[0])
        if self.kind == "uniform":
            return int(p[0]), int(p[1])
        if self.kind == "list":
            return int(min(p)), int(max(p))
        return 1, (max(1, round(p[0])) if p[1] == 0 else None)

    @property
    def mean(self) -> float:
        """The distribution's mean before rounding and clipping."""
        p = self.params
        if self.kind == "uniform":
            return (p[0] + p[1]) / 2
        if self.kind == "list":
            return sum(p) / len(p)
        return p[0]

    @property
    def stddev(self) -> float:
        p = self.params
        if self.kind == "fixed":
            return 0.0
        if self.kind == "uniform":
            n = p[1] - p[0] + 1
            return math.sqrt((n * n - 1) / 12)
        if self.kind == "list":
            m = self.mean
            return math.sqrt(sum((v - m) ** 2 for v in p) / len(p))
        return p[1]

    def clip_probability(self) -> float:
        """Probability that a draw is clipped up to 1 (normal and log-normal; 0 for the others)."""
        if self.kind == "normal" and self.params[1] > 0:
            return 0.5 * math.erfc(-(0.5 - self.params[0]) / (self.params[1] * math.sqrt(2)))
        if self.kind == "lognormal" and self.params[1] > 0:
            mu, sigma = _lognormal_params(*self.params)
            return 0.5 * math.erfc(-(math.log(1.5) - mu) / (sigma * math.sqrt(2)))
        return 0.0

    # --- sampling -----------------------------------------------------------------------------
    def sample(
        self, seed: int, stream: str, index: npt.ArrayLike, *, cap: int | None = None
    ) -> npt.NDArray[np.int64]:
        """The length drawn for each global request index: a pure function of (seed, stream, index)."""
        idx = np.atleast_1d(np.asarray(index, dtype=np.uint64))
        key = stream_key(seed, stream)
        p = self.params
        if self.kind == "fixed":
            out = np.full(idx.shape, int(p[0]), dtype=np.int64)
        elif self.kind == "uniform":
            lo, hi = int(p[0]), int(p[1])
            u = uniforms(key, idx)
            out = np.minimum(lo + np.floor(u * (hi - lo + 1)).astype(np.int64), hi)
        elif self.kind == "list":
            vals = np.asarray(p, dtype=np.int64)
            u = uniforms(key, idx)
            out = vals[np.minimum((u * len(vals)).astype(np.int64), len(vals) - 1)]
        else:
            # Box-Muller from two independent uniforms of the same index; 1 - u is in (0, 1].
            u1, u2 = uniforms(key, idx, 0), uniforms(key, idx, 1)
            z = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
            if self.kind == "normal":
                x = p[0] + p[1] * z
            else:
                mu, sigma = _lognormal_params(p[0], p[1])
                x = np.exp(mu + sigma * z)
            out = np.maximum(np.rint(x), 1).astype(np.int64)
        if cap is not None:
            out = np.minimum(out, cap)
        return out

    def sample_one(self, seed: int, stream: str, index: int, *, cap: int | None = None) -> int:
        return int(self.sample(seed, stream, [index], cap=cap)[0])

    def __str__(self) -> str:
        return self.spec


def _lognormal_params(mean: float, sd: float) -> tuple[float, float]:
    """(mu, sigma) of the underlying normal so that the log-normal has this mean and stddev."""
    sigma2 = math.log1p((sd / mean) ** 2)
    return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)


def parse_length(spec: str | int) -> LengthDist:
    """Parse one length spec; raises `LengthSpecError` saying what was expected."""
    if isinstance(spec, bool):
        raise LengthSpecError(f"expected {LENGTH_SYNTAX}, got {spec!r}")
    if isinstance(spec, int):
        spec = str(spec)
    if not isinstance(spec, str):
        raise LengthSpecError(f"expected {LENGTH_SYNTAX}, got {spec!r}")
    text = spec.strip()
    m = re.fullmatch(_INT, text)
    if m:
        n = int(m[1])
        if n < 1:
            raise LengthSpecError(f"a length must be at least 1, got {spec!r}")
        return LengthDist("fixed", (n,), text)
    m = re.fullmatch(_INT + ":" + _INT, text)
    if m:
        lo, hi = int(m[1]), int(m[2])
        if lo < 1 or hi < lo:
            raise LengthSpecError(f"a uniform range LO:HI needs 1 <= LO <= HI, got {spec!r}")
        return LengthDist("uniform", (lo, hi), text)
    m = re.fullmatch(r"(normal|lognormal)\s*:" + _NUM + "," + _NUM, text)
    if m:
        mean, sd = float(m[2]), float(m[3])
        if mean < 1:
            raise LengthSpecError(f"{m[1]}:MEAN,STDDEV needs MEAN >= 1, got {spec!r}")
        return LengthDist(m[1], (mean, sd), text)  # type: ignore[arg-type]
    m = re.fullmatch(r"list\s*:\s*(\d+(?:\s*,\s*\d+)*)\s*", text)
    if m:
        vals = tuple(int(v) for v in m[1].split(","))
        if min(vals) < 1:
            raise LengthSpecError(f"list:A,B,... needs every length >= 1, got {spec!r}")
        return LengthDist("list", vals, text)
    if re.match(r"\s*(normal|lognormal)\b", text):
        raise LengthSpecError(f"expected normal:MEAN,STDDEV or lognormal:MEAN,STDDEV (numbers), got {spec!r}")
    if re.match(r"\s*list\b", text):
        raise LengthSpecError(f"expected list: followed by comma-separated whole numbers, got {spec!r}")
    raise LengthSpecError(f"expected {LENGTH_SYNTAX}, got {spec!r}")


def length_option(spec: str | int, flag: str) -> LengthDist:
    """`parse_length` for a command-line flag or file field: bad input is an `InputError` naming it."""
    try:
        return parse_length(spec)
    except LengthSpecError as exc:
        raise InputError(f"{flag}: {exc}") from None
