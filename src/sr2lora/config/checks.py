"""Range and shape checks of every numeric config value, and a bound on what a YAML document may expand to.

:func:`check_ranges` runs inside :func:`validate`, so a value out of range (a negative
``train.warmup_steps``, ``ca.tau=0`` which divides by zero, ``seed=-1``) is refused with the key's name before
any work, instead of failing after a task of training or, worse, training into a wrong result.
:func:`check_yaml_size` bounds the number of values a loaded YAML document holds when its aliases are expanded:
a few hundred bytes of nested aliases (``&a [*b, *b, ...]``) expand to billions of values, which printing or
copying the config would take minutes and gigabytes to write out.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError

if TYPE_CHECKING:
    from .schema import ClassifierConfig, RunConfig

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


def validate(cfg: RunConfig) -> None:
    """Checks that need more than one field or a range; each error names the key."""
    from ..train.schedules import schedule_names  # the registry of schedules (lr rules)

    sc, m, t, d = cfg.scenario, cfg.model, cfg.train, cfg.data
    if sc.init_cls <= 0:
        raise ConfigError(f"scenario.init_cls: must be positive, got {sc.init_cls}")
    if sc.increment <= 0:
        raise ConfigError(f"scenario.increment: must be positive, got {sc.increment}")
    if not (sc.order in ("natural", "seeded") or isinstance(sc.order, list)):
        raise ConfigError(f"scenario.order: expected natural, seeded or a list of class ids, got {sc.order!r}")
    if m.rank <= 0:
        raise ConfigError(f"model.rank: must be a positive integer, got {m.rank}")
    bad = [x for x in m.lora_targets if x not in ("q", "k", "v")]
    if bad or not m.lora_targets or len(set(m.lora_targets)) != len(m.lora_targets):
        raise ConfigError(
            f"model.lora_targets: expected a non-empty subset of [q, k, v] without repeats, got {m.lora_targets}"
        )
    if not (isinstance(m.pretrained, bool) or isinstance(m.pretrained, str)):
        raise ConfigError(f"model.pretrained: expected false, true or a path to a weights file, got {m.pretrained!r}")
    for key, val in (("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
                     ("train.eval_batch_size", t.eval_batch_size), ("data.image_size", d.image_size)):
        if val <= 0:
            raise ConfigError(f"{key}: must be positive, got {val}")
    if t.lr <= 0:
        raise ConfigError(f"train.lr: must be positive, got {t.lr}")
    choices = {
        "train.optimizer": (t.optimizer, ("adam", "sgd")),
        "train.schedule": (t.schedule, schedule_names()),
        "train.loss": (t.loss, ("ce", "logitnorm")),
        "train.precision": (t.precision, ("auto", "fp32", "bf16")),
        "data.normalize": (d.normalize, ("none", "imagenet", "backbone")),
    }
    for key, (val, ok) in choices.items():
        if val not in ok:
            raise ConfigError(f"{key}: expected one of {', '.join(ok)}, got {val!r}")
    if len(d.train_scale) != 2 or not 0 < d.train_scale[0] <= d.train_scale[1] <= 1:
        raise ConfigError(f"data.train_scale: expected [low, high] with 0 < low <= high <= 1, got {d.train_scale}")
    if not 0 <= d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction: expected 0 <= x < 1, got {d.val_fraction}")
    if not 0 < d.test_fraction < 1:
        raise ConfigError(f"data.test_fraction: expected 0 < x < 1, got {d.test_fraction}")
    if cfg.ca.epochs < 0:
        raise ConfigError(f"ca.epochs: must be >= 0, got {cfg.ca.epochs}")
    if cfg.ca.minibatch not in ("reference", "batch"):
        raise ConfigError(f"ca.minibatch: expected one of reference, batch, got {cfg.ca.minibatch!r}")
    validate_classifier(cfg.classifier)
    check_ranges(cfg)  # every numeric key's range, list item types, the device's form
    if cfg.analysis.samples_per_task <= 0:
        raise ConfigError(f"analysis.samples_per_task: must be positive, got {cfg.analysis.samples_per_task}")


def validate_classifier(c: ClassifierConfig) -> None:
    """The ``classifier.`` section: kind, projection size, λ grid and held-out share."""
    kinds = ("auto", "ca", "ncm", "ridge")
    if c.kind not in kinds:
        raise ConfigError(f"classifier.kind: expected one of {', '.join(kinds)}, got {c.kind!r}")
    if c.rp_dim < 0:
        raise ConfigError(f"classifier.rp_dim: must be >= 0 (0 = no random projection), got {c.rp_dim}")
    if not c.lambdas or any(lam <= 0 for lam in c.lambdas):
        raise ConfigError(f"classifier.lambdas: expected a non-empty list of positive numbers, got {c.lambdas}")
    if not 0 < c.val_fraction < 1:
        raise ConfigError(f"classifier.val_fraction: expected 0 < x < 1, got {c.val_fraction}")
