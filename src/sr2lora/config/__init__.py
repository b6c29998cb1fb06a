"""Run configuration: typed sections (:mod:`.schema`), presets and overrides (:mod:`.load`), checks (:mod:`.checks`).

``load_config(preset, overrides)`` is the one way to get a validated :class:`RunConfig`.
"""

from ..core.errors import ConfigError
from .checks import validate
from .load import (
    build_config,
    dump_config,
    load_config,
    load_preset_dict,
    method_defaults_used,
    parse_overrides,
    preset_dir,
    preset_names,
)
from .schema import (
    RESUME_FREE_KEYS,
    RUNTIME_KEYS,
    AnalysisConfig,
    CAConfig,
    ClassifierConfig,
    DataConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    ScenarioConfig,
    TrainConfig,
    experiment_dict,
    flatten,
)

__all__ = [
    "RESUME_FREE_KEYS", "RUNTIME_KEYS", "AnalysisConfig", "CAConfig", "ClassifierConfig", "ConfigError",
    "DataConfig", "MethodConfig", "ModelConfig", "RunConfig", "ScenarioConfig", "TrainConfig", "build_config", "dump_config", "experiment_dict",
    "flatten", "load_config", "load_preset_dict", "method_defaults_used", "parse_overrides", "preset_dir", "preset_names", "validate",
]
