"""Run configuration: every preset loads and validates, presets extend their base, overrides are typed and merge,
the resolved config round-trips as a preset, and the runtime keys are the only ones a resume may change."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from sr2lora.config import (
    RUNTIME_KEYS,
    ConfigError,
    RunConfig,
    dump_config,
    experiment_dict,
    flatten,
    load_config,
    load_preset_dict,
    parse_overrides,
    preset_dir,
    preset_names,
)
from sr2lora.methods import get_method_class


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_loads_validates_and_round_trips(name, tmp_path):
    """Each preset gives a validated config whose dump is itself a preset giving the same config."""
    cfg = load_config(name)
    assert isinstance(cfg, RunConfig) and cfg.preset == name
    assert cfg.classifier.kind != "auto"  # resolved to the method's own classifier
    assert cfg.classifier.kind == get_method_class(cfg.method.name).default_classifier
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert dataclasses.replace(again, preset=cfg.preset).to_dict() == cfg.to_dict()


def test_a_preset_extends_its_base():
    """The paper presets share `_paper.yaml`: every value of the base arrives unless the preset sets it."""
    names = [n for n in preset_names() if n.startswith("imagenet-r-")]
    assert names, "the paper grid's presets are shipped"
    base = yaml.safe_load((preset_dir() / "_paper.yaml").read_text())
    for name in names:
        merged = flatten(load_preset_dict(name))
        own = flatten(yaml.safe_load((preset_dir() / f"{name}.yaml").read_text()))
        for key, value in flatten(base).items():
            if key != "base" and key not in own:
                assert merged[key] == value, (name, key)


def test_a_base_chain_that_loops_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"))


def test_overrides_are_typed_merged_and_applied_in_order():
    cfg = load_config("smoke", ["model.rank=7", "method.weight=0.5", "scenario.order=natural", "model.rank=3",
                                "model.timm_kwargs.depth=2", "method.layers=[0,2]"])
    assert cfg.model.rank == 3 and cfg.method.weight == 0.5 and cfg.scenario.order == "natural"
    # a dotted key into a mapping merges into it instead of replacing it
    assert cfg.model.timm_kwargs == {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
    assert cfg.method.options["layers"] == [0, 2]
    # values are YAML scalars, then typed by the schema ("1e-3" is a YAML string, a float once typed)
    assert parse_overrides(["train.lr=1e-3", "data.hflip=false"]) == {"train": {"lr": "1e-3"},
                                                                     "data": {"hflip": False}}
    assert load_config("smoke", ["train.lr=1e-3"]).train.lr == 1e-3


def test_overrides_are_typed_and_validated():
    with pytest.raises(ConfigError, match="did you mean train.epochs"):
        load_config("smoke", ["train.epoch=3"])
    with pytest.raises(ConfigError, match="model.rank"):
        load_config("smoke", ["model.rank=0"])
    with pytest.raises(ConfigError, match="lora_targets"):
        load_config("smoke", ["model.lora_targets=[k, x]"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config("smoke", ["train.epochs=many"])
    with pytest.raises(ConfigError, match="no preset named"):
        load_config("smok")
    with pytest.raises(ConfigError, match="method.name: unknown method 'sr2lor'; did you mean sr2lora"):
        load_config("smoke", ["method.name=sr2lor"])


def test_method_options_are_validated_against_the_method():
    """``method.<option>`` keys belong to the method: one it does not declare is refused, naming the method."""
    assert load_config("smoke", ["method.relation_norm=l2"]).method.options["relation_norm"] == "l2"
    with pytest.raises(ConfigError, match="method.name=frozen"):
        load_config("smoke", ["method.name=frozen", "method.relation_norm=l2"])


def test_only_runtime_keys_leave_the_experiment_unchanged():
    """Two configs differing in runtime keys only compute the same thing; any other key is part of it."""
    base = load_config("smoke")
    runtime = load_config("smoke", ["train.device=cpu", "train.threads=1", "data.num_workers=0",
                                    "train.eval_batch_size=7"])
    assert experiment_dict(base) == experiment_dict(runtime)
    assert {"train.device", "train.threads", "data.num_workers", "train.eval_batch_size"} <= RUNTIME_KEYS
    assert experiment_dict(base) != experiment_dict(load_config("smoke", ["train.lr=0.01"]))
    assert not set(experiment_dict(base)) & RUNTIME_KEYS
