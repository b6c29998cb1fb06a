"""Range and shape checks of every numeric config value, and a bound on what a YAML document may expand to.

:func:`check_ranges` runs inside :func:`sr2lora.config.validate`, so a value out of range (a negative
``train.warmup_steps``, ``ca.tau=0`` which divides by zero, ``seed=-1``) is refused with the key's name before
any work, instead of failing after a task of training or, worse, training into a wrong result.
:func:`check_yaml_size` bounds the number of values a loaded YAML document holds when its aliases are expanded:
a few hundred bytes of nested aliases (``&a [*b, *b, ...]``) expand to billions of values, which printing or
copying the config would take minutes and gigabytes to write out.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import RunConfig

MAX_YAML_VALUES = 100_000  # values in one expanded config document; a real preset holds about a hundred
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

# (key, lowest, lowest allowed, highest, highest allowed): None = unbounded on that side
RANGES: tuple[tuple[str, float | None, bool, float | None, bool], ...] = (
    ("seed", 0, True, 2**32 - 1, True),
    ("data.num_workers", 0, True, None, False),
    ("data.resize_ratio", 0, False, None, False),
    ("data.render_size", 0, False, None, False),
    ("data.split_seed", 0, True, 2**32 - 1, True),
    ("train.weight_decay", 0, True, None, False),
    ("train.warmup_steps", 0, True, None, False),
    ("train.logitnorm_tau", 0, False, None, False),
    ("train.threads", 0, True, None, False),
    ("method.weight", 0, True, None, False),
    ("ca.lr", 0, False, None, False),
    ("ca.momentum", 0, True, 1, False),
    ("ca.samples_factor", 1, True, None, False),
    ("ca.batch_size", 0, True, None, False),
    ("ca.tau", 0, False, None, False),
    ("ca.cov_shrink", 0, True, None, False),
    ("ca.t_max", 1, True, None, False),
    ("ca.fallback_var", 0, False, None, False),
    ("analysis.seed", 0, True, 2**32 - 1, True),
)
# Method options (any method that declares them): smooth-L1 β must be positive, seeds non-negative.
OPTION_RANGES = (("beta", 0, False, None, False), ("layers_seed", 0, True, 2**32 - 1, True))


def _get(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _check(key: str, value: Any, lo: float | None, lo_ok: bool, hi: float | None, hi_ok: bool) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    low_bad = lo is not None and (value < lo or (value == lo and not lo_ok))
    high_bad = hi is not None and (value > hi or (value == hi and not hi_ok))
    if low_bad or high_bad:
        parts = []
        if lo is not None:
            parts.append(f"{'>=' if lo_ok else '>'} {_fmt(lo)}")
        if hi is not None:
            parts.append(f"{'<=' if hi_ok else '<'} {_fmt(hi)}")
        raise ConfigError(f"{key}: must be {' and '.join(parts)}, got {value!r}")


def check_ranges(cfg: RunConfig) -> None:
    """Raise ConfigError naming the first key whose value is out of its range (see RANGES)."""
    for key, *bounds in RANGES:
        _check(key, _get(cfg, key), *bounds)
    for name, *bounds in OPTION_RANGES:
        if name in cfg.method.options:
            _check(f"method.{name}", cfg.method.options[name], *bounds)
    d = cfg.data
    if len(d.train_ratio) != 2 or not 0 < d.train_ratio[0] <= d.train_ratio[1]:
        raise ConfigError(f"data.train_ratio: expected [low, high] with 0 < low <= high, got {d.train_ratio}")
    order = cfg.scenario.order
    if isinstance(order, list):
        for i, c in enumerate(order):
            if isinstance(c, bool) or not isinstance(c, int):
                raise ConfigError(f"scenario.order[{i}]: expected a class id (an integer), got {c!r}")
    if not DEVICE_RE.match(str(cfg.train.device)):
        raise ConfigError(f"train.device: expected auto, cpu, cuda, cuda:N or mps, got {cfg.train.device!r}")


def check_yaml_size(data: Any, where: str, limit: int = MAX_YAML_VALUES) -> None:
    """Raise ConfigError when ``data`` (as loaded, aliases shared) holds more than ``limit`` values expanded.

    The walk stops as soon as the bound is passed, so checking a bomb costs at most ``limit`` steps."""
    count = 0
    stack = [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise ConfigError(
                f"{where}: the YAML expands to more than {limit} values (aliases such as *name repeat their "
                f"anchor's content); refused. Write the values out instead of nesting aliases"
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
