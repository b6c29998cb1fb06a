"""Typed run configuration: dataclasses, YAML presets, dotted overrides and validation with clear errors.

A run is fully described by one :class:`RunConfig`. Presets are YAML files in ``sr2lora/presets`` (loaded with
``yaml.safe_load``); a preset may name a ``base`` preset it extends. Command-line overrides are ``key=value``
pairs with dotted keys (``train.epochs=5``), values parsed as YAML scalars/lists. Method-specific options live
under ``method.`` and are declared by each method (see :mod:`sr2lora.methods`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from .atomic import atomic_write_text
from .config_checks import check_ranges, check_yaml_size
from .errors import ConfigError
from .schedules import schedule_names


@dataclass
class DataConfig:
    """Where the images come from and how they are split and transformed."""

    dataset: str = "smoke"  # a registered dataset name (see `sr2lora presets` / data.registry)
    root: str | None = None  # dataset folder; None = the dataset's default location
    download: bool = False  # allow downloading a missing dataset (CIFAR-100 only)
    image_size: int = 224  # model input size (px)
    train_scale: list[float] = field(default_factory=lambda: [0.05, 1.0])  # RandomResizedCrop scale
    train_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333333333333])
    hflip: bool = True
    resize_ratio: float = 256 / 224  # test: Resize(size*ratio, bicubic) + CenterCrop(size)
    normalize: str = "none"  # none (reference) | imagenet | backbone (mean/std from the timm config)
    num_workers: int = 0
    split_seed: int = 0  # seeded stratified split for datasets without an official one
    test_fraction: float = 0.25  # used only by such datasets
    val_fraction: float = 0.0  # >0: carve a validation split from train and evaluate on it instead of test
    split_file: str | None = None  # optional explicit split list (e.g. ImageNet-R train list)
    skip_bad: bool = False  # skip unreadable images (listed in results) instead of failing
    render_size: int = 128  # openclipart: size the SVGs are rasterised to before transforms


@dataclass
class ScenarioConfig:
    """How the classes are cut into tasks."""

    init_cls: int = 10  # classes in the first task
    increment: int = 10  # classes in every later task
    order: Any = "seeded"  # natural | seeded (np.random.seed(seed); permutation) | explicit list of class ids


@dataclass
class ModelConfig:
    """The frozen backbone and its per-task LoRA."""

    backbone: str = "vit_base_patch16_224.augreg_in21k"  # a timm tag, or `imgfocus-vits14` (offline)
    pretrained: Any = True  # false | true (timm/hub) | path to a .safetensors/.pth/.npz file
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs (micro ViTs)
    rank: int = 10
    lora_targets: list[str] = field(default_factory=lambda: ["k", "v"])


@dataclass
class TrainConfig:
    """Optimisation of each task (reference defaults)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | sgd
    schedule: str = "reference"  # reference (per-epoch cos(99π e / 200(E-1))) | cosine-step | constant
    warmup_steps: int = 0  # cosine-step only
    loss: str = "ce"  # ce | logitnorm (the reference on ImageNet-A)
    logitnorm_tau: float = 0.1
    precision: str = "auto"  # auto (bf16 where the device computes it natively, else fp32) | fp32 | bf16
    compile: bool = False
    eval_batch_size: int = 256
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class MethodConfig:
    """Which continual-learning method runs, its weight λ and its own declared options."""

    name: str = "sr2lora"
    weight: float = 1.0  # λ: total loss = CE + λ · regulariser
    options: dict[str, Any] = field(default_factory=dict)  # method-declared options (method.<key>=...)


@dataclass
class CAConfig:
    """Classifier alignment after every task (shared by all methods)."""

    enabled: bool = True
    epochs: int = 20
    lr: float = 0.005
    momentum: float = 0.9
    samples_factor: int = 5  # samples per class per epoch = samples_factor × batch_size
    batch_size: int = 0  # 0 = train.batch_size
    tau: float = 0.1  # LogitNorm temperature
    cov_shrink: float = 0.01  # Σ_c = cov + cov_shrink · I
    t_max: int = 5  # CosineAnnealingLR(T_max) stepped per epoch (reference)
    fallback_var: float = 1.0  # isotropic variance for a class with fewer than 2 samples
    minibatch: str = "reference"  # reference (steps of samples_factor × batch: C per epoch) | batch


@dataclass
class ClassifierConfig:
    """What turns features into predictions at evaluation (see docs/classifiers.md); any method, any classifier."""

    kind: str = "auto"  # auto (the method's own: ca for most) | ca | ncm | ridge
    rp_dim: int = 10000  # ridge: random-projection size M (RanPAC's 10000; 0 = no projection, ridge on f)
    lambdas: list[float] = field(default_factory=lambda: [10.0**k for k in range(-8, 9)])  # ridge λ grid
    val_fraction: float = 0.2  # ridge: share of each class's training features held out to choose λ
    seed: int = 0  # ridge: combined with the run seed for the random projection and the held-out split


@dataclass
class AnalysisConfig:
    """Drift analysis during training (sr2lora.analysis): RUN/drift.json after every task; off by default."""

    enabled: bool = False
    samples_per_task: int = 64  # held-out evaluation items per task (seeded, fixed for the whole run)
    seed: int = 0  # seed of that sample


@dataclass
class RunConfig:
    """Everything that defines one run."""

    seed: int = 1993
    data: DataConfig = field(default_factory=DataConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    ca: CAConfig = field(default_factory=CAConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    preset: str | None = None  # the preset this config came from (informational)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict; method options are flattened under `method` as on the command line."""
        d = dataclasses.asdict(self)
        opts = d["method"].pop("options")
        d["method"].update(opts)
        return d


_SECTIONS = {f.name: f for f in dataclasses.fields(RunConfig)}


# ---------------------------------------------------------------- presets


def preset_dir() -> Path:
    return Path(str(resources.files("sr2lora") / "presets"))


def preset_names() -> list[str]:
    """Shipped preset names (files starting with `_` are shared bases), numbers sorted numerically."""
    import re

    def key(name: str) -> list:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]

    return sorted((p.stem for p in preset_dir().glob("*.yaml") if not p.stem.startswith("_")), key=key)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    check_yaml_size(data, str(path))  # before anything copies or prints it: aliases can expand exponentially
    return data


def load_preset_dict(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a preset (by name or YAML path) and the chain of ``base`` presets it extends, merged."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = preset_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            hint = difflib.get_close_matches(name_or_path, preset_names(), n=3)
            extra = f"; did you mean {', '.join(hint)}?" if hint else ""
            raise ConfigError(
                f"--preset: no preset named {name_or_path!r}{extra} (`sr2lora presets` lists them; a path to a "
                f".yaml file also works)"
            )
    if str(path) in _seen:
        raise ConfigError(f"{path}: `base` presets form a cycle: {' -> '.join(_seen)}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    merged = load_preset_dict(_base_path(path, base), _seen + (str(path),))
    _deep_update(merged, data)
    return merged


def _base_path(preset: Path, base: Any) -> str:
    """A preset's ``base``: a shipped preset name, or a YAML path relative to the preset's own folder."""
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{preset}: base: expected a preset name or a .yaml path, got {base!r}")
    if Path(base).suffix in (".yaml", ".yml"):
        candidate = Path(base).expanduser()
        if not candidate.is_absolute():
            candidate = preset.parent / candidate
        if not candidate.is_file():
            raise ConfigError(f"{preset}: base: {base} not found (looked for {candidate}; a relative base is read "
                              f"from the folder of the preset that names it)")
        return str(candidate)
    if not (preset_dir() / f"{base}.yaml").is_file():
        hint = difflib.get_close_matches(base, preset_names(), n=3)
        extra = f"; did you mean {', '.join(hint)}?" if hint else ""
        raise ConfigError(f"{preset}: base: no preset named {base!r}{extra} (`sr2lora presets` lists them)")
    return base


def _deep_update(dst: dict[str, Any], src: dict[str, Any], merge_all: bool = False) -> None:
    """Merge ``src`` into ``dst``; a ``timm_kwargs`` mapping replaces the one below unless ``merge_all`` (a dotted
    override such as ``model.timm_kwargs.depth=2`` changes one keyword and keeps the others)."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and (merge_all or k not in ("timm_kwargs",)):
            _deep_update(dst[k], v, merge_all)
        else:
            dst[k] = v


# ---------------------------------------------------------------- overrides


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[x, y]"]`` into a nested dict; values are YAML scalars or lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (for example train.epochs=5)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError:
            value = raw
        check_yaml_size(value, f"override {key}")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is both a value and a section")
        node[parts[-1]] = value
    return out


# ---------------------------------------------------------------- building and validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``key``."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Union or str(origin) == "<class 'types.UnionType'>":
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads exponents without a dot (5e-4) as strings
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    hint = difflib.get_close_matches(leaf, valid, n=1)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    extra = f"; did you mean {prefix}{hint[0]}?" if hint else ""
    return ConfigError(f"unknown config key {key!r}{extra} (valid: {', '.join(sorted(valid)) or 'none'})")


def _build_section(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise _unknown_key(f"{prefix}{k}", names)
        kwargs[k] = _coerce(v, hints[k], f"{prefix}{k}")
    return cls(**kwargs)


# A preset's settings for one method only: ``per_method: {sdlora: {train: {lr: 0.008}}}`` applies to runs of
# that method, above the preset's other keys and below the command line (e.g. a reference's per-dataset lr).
PER_METHOD_KEY = "per_method"


def _method_name(data: dict[str, Any]) -> str:
    return _coerce((data.get("method") or {}).get("name", MethodConfig.name), str, "method.name")


def apply_per_method(data: dict[str, Any], name: str) -> None:
    """Pop ``data``'s :data:`PER_METHOD_KEY` section and merge its entry for method ``name`` into ``data``."""
    from .methods import method_names

    sections = data.pop(PER_METHOD_KEY, None)
    if sections is None:
        return
    if not isinstance(sections, dict):
        raise ConfigError(f"{PER_METHOD_KEY}: expected a mapping of method name -> settings, got {sections!r}")
    for method, section in sections.items():
        if method not in method_names():
            raise ConfigError(f"{PER_METHOD_KEY}.{method}: unknown method (choose among {', '.join(method_names())})")
        if not isinstance(section, dict):
            raise ConfigError(f"{PER_METHOD_KEY}.{method}: expected a mapping of settings, got {section!r}")
        if "name" in (section.get("method") or {}):
            raise ConfigError(f"{PER_METHOD_KEY}.{method}: may not set method.name")
    _deep_update(data, copy.deepcopy(sections.get(name) or {}))


def _has_key(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def apply_training_defaults(data: dict[str, Any], method_cls: type) -> dict[str, Any]:
    """Fill the keys of ``method_cls.training_defaults`` that ``data`` leaves unset; returns those filled.

    A method's training defaults (e.g. SD-LoRA's SGD recipe) replace only the built-in defaults: a key that the
    preset, its ``per_method`` section or the command line sets is kept. A saved ``config.yaml`` sets every key,
    so reloading one (resume, run reuse) never changes it.
    """
    filled: dict[str, Any] = {}
    for dotted, value in getattr(method_cls, "training_defaults", {}).items():
        if _has_key(data, dotted):
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, dict):
            continue  # a section that is not a mapping: build_config names the error
        node[leaf] = copy.deepcopy(value)
        filled[dotted] = value
    return filled


def build_config(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a nested dict (preset merged with overrides).

    A preset's ``per_method`` section is applied for the chosen method (when :func:`load_config` has not already
    applied it below the command line), then the method's training defaults fill the keys still unset.
    """
    from .methods import get_method_class  # methods declare their own options

    data = copy.deepcopy(data)
    if not isinstance(data.get("method") or {}, dict):
        raise ConfigError(f"method: expected a section (mapping), got {data['method']!r}")
    name = _method_name(data)
    apply_per_method(data, name)
    apply_training_defaults(data, get_method_class(name))
    kwargs: dict[str, Any] = {}
    hints = get_type_hints(RunConfig)
    for k, v in data.items():
        if k not in _SECTIONS:
            raise _unknown_key(k, list(_SECTIONS))
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if v is None:
                v = {}
            if not isinstance(v, dict):
                raise ConfigError(f"{k}: expected a section (mapping), got {v!r}")
            if tp is MethodConfig:
                continue
            kwargs[k] = _build_section(tp, v, f"{k}.")
        else:
            kwargs[k] = _coerce(v, tp, k)
    # The method section: name and weight are common, the rest is validated against the method's options.
    mdata = dict(data.get("method") or {})
    name = _coerce(mdata.pop("name", MethodConfig.name), str, "method.name")
    weight = _coerce(mdata.pop("weight", MethodConfig.weight), float, "method.weight")
    mdata.update(mdata.pop("options", {}) or {})
    method_cls = get_method_class(name)
    opt_cls = method_cls.Options
    try:
        options = _build_section(opt_cls, mdata, "method.")
    except ConfigError as exc:  # name the method: in a sweep over method.name an option may fit only some
        raise ConfigError(f"method.name={name}: {exc}") from exc
    kwargs["method"] = MethodConfig(name=name, weight=weight, options=dataclasses.asdict(options))
    cfg = RunConfig(**kwargs)
    validate(cfg)
    if cfg.classifier.kind == "auto":  # the saved config (and the report) name the classifier that ran
        cfg.classifier.kind = getattr(method_cls, "default_classifier", "ca")
    return cfg


def load_config(preset: str | None, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Preset (name or path; None = defaults) + overrides → a validated RunConfig."""
    data = resolved_dict(preset, overrides)
    cfg = build_config(data)
    if preset and cfg.preset is None:
        cfg.preset = Path(preset).stem
    return cfg


def resolved_dict(preset: str | None, overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """The preset (with its ``per_method`` section for the chosen method) merged with the overrides, in that
    order of precedence, before the method's training defaults fill what is left unset."""
    data = load_preset_dict(preset) if preset else {}
    parsed = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    name = (parsed.get("method") or {}).get("name") if isinstance(parsed.get("method"), dict) else None
    if name is None:
        name = _method_name(data) if isinstance(data.get("method") or {}, dict) else MethodConfig.name
    apply_per_method(data, _coerce(name, str, "method.name"))  # below the command line, above the preset
    if isinstance(overrides, list):
        for item in overrides:  # in order; a dotted key into a mapping merges into it
            key = item.split("=", 1)[0].strip()
            _deep_update(data, parse_overrides([item]), merge_all="timm_kwargs" in key.split(".")[:-1])
    else:
        _deep_update(data, overrides or {})
    return data


def method_defaults_used(preset: str | None, overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """The method's training defaults that a config from ``preset`` and ``overrides`` takes (keys left unset)."""
    from .methods import get_method_class

    data = resolved_dict(preset, overrides)
    return apply_training_defaults(data, get_method_class(_method_name(data)))


def validate(cfg: RunConfig) -> None:
    """Checks that need more than one field or a range; each error names the key."""
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


# Keys that change where or how fast a run computes, not what it computes: a resume may change them, a finished
# run is reused whatever they are, and the report never groups runs by them.
RUNTIME_KEYS = frozenset({"train.device", "train.threads", "data.num_workers", "data.root", "train.eval_batch_size"})


def experiment_dict(cfg: RunConfig) -> dict[str, Any]:
    """The flattened config without :data:`RUNTIME_KEYS`: two runs with equal dicts compute the same thing."""
    return {k: v for k, v in flatten(cfg.to_dict()).items() if k not in RUNTIME_KEYS}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict → dotted keys (``timm_kwargs`` kept as one value): for diffs between configs."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "timm_kwargs":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def dump_config(cfg: RunConfig, path: Path) -> None:
    """Write the fully resolved config as YAML (loadable again with `--preset path`)."""
    # atomic: config.yaml marks a run folder, so a half-written one must never exist
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
