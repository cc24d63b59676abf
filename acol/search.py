"""Random search spaces: per dotted config key a distribution, sampled deterministically (acol.ablate).

    "optim.lr" = { log_uniform = [0.002, 0.05] }           # exp(U(log low, log high))
    "acol.threshold" = { uniform = [0.5, 0.9] }            # U(low, high)
    "has.grid_size" = { int_uniform = [4, 32] }            # an integer in low..high, each equally likely
    "model.large_feature_map" = { choice = [true, false] } # one of the values, each equally likely

Numbers are rounded to 3 significant digits (readable run names; the same value is the same run) and
kept in [low, high]. A key the config schema types int gets integers from uniform and log_uniform too
(the draw rounded to the nearest; integer bounds). Every (search seed, group, trial, key) has its own
random stream (numpy's SeedSequence of the seed, the CRC-32s of the group's name and of the key, the
trial index and the attempt), so adding a group or a key, or raising the number of trials, changes no
other draw. A trial equal to an earlier trial of its group is drawn again (the next attempt's streams),
so a group's trials are distinct configurations, the budget is the number of runs.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from acol.config import ConfigError, check_value, key_type

DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
DIGITS = 3          # significant digits of a drawn number
ATTEMPTS = 100      # draws of one trial before its space counts as exhausted


@dataclass(frozen=True)
class Distribution:
    kind: str                   # one of DISTRIBUTIONS
    values: tuple               # (low, high), or the choices
    integer: bool = False       # numbers drawn as integers

    def draw(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        low, high = self.values
        if self.kind == "int_uniform":
            return int(rng.integers(low, high + 1))
        x = math.exp(rng.uniform(math.log(low), math.log(high))) if self.kind == "log_uniform" else rng.uniform(low, high)
        x = round(x) if self.integer else float(f"{x:.{DIGITS}g}")
        return min(max(x, low), high)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def distribution(key: str, spec: Any) -> Distribution:
    """The distribution of `key` written as `spec` (`{uniform = [low, high]}` ...); ConfigError (one line,
    naming the key) for an unknown key or distribution, bad bounds, or values the key's type refuses."""
    typ = key_type(key)
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{key} must be one of {{ {' | '.join(f'{d} = [...]' for d in DISTRIBUTIONS)} }}; got {spec!r}")
    (kind, values), = spec.items()
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{key}: choice must be a non-empty list of values; got {values!r}")
        return Distribution(kind, tuple(check_value(v, typ, key, "choice") for v in values))
    if typ not in (int, float):
        raise ConfigError(f"{key} is {getattr(typ, '__name__', typ)}: {kind} draws numbers (use choice)")
    if not (isinstance(values, list) and len(values) == 2 and all(map(_number, values)) and values[0] < values[1]):
        raise ConfigError(f"{key}: {kind} must be [low, high] with finite numbers low < high; got {values!r}")
    integer = kind == "int_uniform" or typ is int
    if integer and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{key}: {kind} draws integers{' (the key is int)' * (typ is int)}: its bounds must be "
                          f"integers; got {values!r}")
    if kind == "log_uniform" and values[0] <= 0:
        raise ConfigError(f"{key}: log_uniform needs bounds > 0; got {values!r}")
    return Distribution(kind, tuple(values), integer)


def search_space(table: Any) -> dict[str, Distribution]:
    """A [search] table: {dotted key: distribution}."""
    if not isinstance(table, dict) or not table:
        raise ConfigError("must be a table of dotted config keys, each with a distribution")
    return {key: distribution(key, spec) for key, spec in table.items()}


def _stream(seed: int, group: str, trial: int, key: str, attempt: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(group.encode()), trial, zlib.crc32(key.encode()), attempt])


def sample_trials(distributions: dict[str, Distribution], trials: int, seed: int, group: str) -> list[dict[str, Any]]:
    """`trials` distinct settings ({key: value}) of the group named `group`, in trial order."""
    found: list[dict[str, Any]] = []
    for trial in range(trials):
        for attempt in range(ATTEMPTS):
            settings = {key: d.draw(_stream(seed, group, trial, key, attempt)) for key, d in distributions.items()}
            if settings not in found:
                break
        else:
            raise ConfigError(f"trial {trial}: {ATTEMPTS} draws repeat earlier trials; the space holds fewer than "
                              f"{trials} distinct configurations (at {DIGITS} significant digits): widen it or lower trials")
        found.append(settings)
    return found
