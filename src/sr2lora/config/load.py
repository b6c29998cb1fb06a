"""Loading a run configuration: YAML presets (``yaml.safe_load``), the ``base`` chain, dotted overrides.

Presets are YAML files in ``sr2lora/config/presets``; a preset may name a ``base`` preset it extends.
Command-line overrides are ``key=value`` pairs with dotted keys (``train.epochs=5``), values parsed as YAML
scalars/lists. Every value is typed by :mod:`sr2lora.config.schema` and checked by :mod:`sr2lora.config.checks`
before any work starts, with errors that name the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from ..core.atomic import atomic_write_text
from ..core.errors import ConfigError
from .checks import check_yaml_size, validate
from .schema import MethodConfig, RunConfig

_SECTIONS = {f.name: f for f in dataclasses.fields(RunConfig)}


# ---------------------------------------------------------------- presets


def preset_dir() -> Path:
    return Path(str(resources.files("sr2lora.config") / "presets"))


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
    from ..methods import method_names

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
    from ..methods import get_method_class  # methods declare their own options

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


def load_config(preset: str | None, overrides: Sequence[str] | dict[str, Any] | None = None) -> RunConfig:
    """Preset (name or path; None = defaults) + overrides (``key=value`` strings, or a nested dict) → a validated
    RunConfig."""
    cfg = build_config(resolved_dict(preset, overrides))
    if preset and cfg.preset is None:
        cfg.preset = Path(preset).stem
    return cfg


def resolved_dict(preset: str | None, overrides: Sequence[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """The preset (with its ``per_method`` section for the chosen method) merged with the overrides, in that
    order of precedence, before the method's training defaults fill what is left unset."""
    data = load_preset_dict(preset) if preset else {}
    if overrides is not None and not isinstance(overrides, dict):
        overrides = list(overrides)
        parsed = parse_overrides(overrides)  # every item well-formed first
    else:
        parsed = dict(overrides or {})
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


def method_defaults_used(preset: str | None, overrides: Sequence[str] | dict[str, Any] | None = None
                         ) -> dict[str, Any]:
    """The method's training defaults that a config from ``preset`` and ``overrides`` takes (keys left unset)."""
    from ..methods import get_method_class

    data = resolved_dict(preset, overrides)
    return apply_training_defaults(data, get_method_class(_method_name(data)))


def dump_config(cfg: RunConfig, path: Path) -> None:
    """Write the fully resolved config as YAML (loadable again with `--preset path`)."""
    # atomic: config.yaml marks a run folder, so a half-written one must never exist
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
