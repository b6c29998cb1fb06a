"""A method's own training defaults and a preset's per-method settings: who wins, what is shown, what is saved.

Precedence, highest first: the command line; the preset's ``per_method`` section for the run's method; the
preset's other keys; the method's ``training_defaults``; the built-in defaults. A saved config.yaml sets every
key, so reloading it (resume, run reuse) never changes a value.
"""

from __future__ import annotations

import pytest

from conftest import run_cli
from sr2lora.config import dump_config, load_config, method_defaults_used, preset_names
from sr2lora.core.errors import ConfigError
from sr2lora.methods.sdlora import REFERENCE_RECIPE

PAPER = [p for p in preset_names() if p.split("-")[0] in ("cifar100", "imagenet", "cub200")]


def test_sdlora_takes_its_reference_recipe_where_nothing_else_is_set():
    cfg = load_config("clipart-10t", ["method.name=sdlora"])
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.schedule, cfg.train.weight_decay) == ("sgd", 0.01,
                                                                                                "constant", 0.0)
    assert cfg.model.lora_targets == ["q", "v"]
    assert (cfg.method.options["handover"], cfg.method.options["init_magnitude"]) == ("reference", 0.8)
    assert method_defaults_used("clipart-10t", ["method.name=sdlora"]) == REFERENCE_RECIPE
    other = load_config("clipart-10t", ["method.name=seqlora"])  # a method without defaults: the built-ins
    assert (other.train.optimizer, other.train.lr, other.train.schedule, other.model.lora_targets) == (
        "adam", 0.0005, "reference", ["k", "v"])


def test_explicit_settings_win_over_the_method_defaults():
    cfg = load_config("clipart-10t", ["method.name=sdlora", "train.optimizer=adam", "model.lora_targets=[k, v]"])
    assert (cfg.train.optimizer, cfg.model.lora_targets, cfg.train.lr) == ("adam", ["k", "v"], 0.01)
    assert "train.optimizer" not in method_defaults_used("clipart-10t", ["method.name=sdlora", "train.optimizer=adam"])
    # a preset's own key wins too (smoke sets train.lr for every method, and per_method a lr for sdlora)
    assert load_config("smoke", ["method.name=sdlora"]).train.lr == 0.05
    assert load_config("smoke", ["method.name=sr2lora"]).train.lr == 0.005


def test_per_method_section_sits_between_the_preset_and_the_command_line():
    assert load_config("cifar100-10t", ["method.name=sdlora"]).train.lr == 0.008
    assert load_config("cifar100-10t", ["method.name=sdlora", "train.lr=0.001"]).train.lr == 0.001
    assert load_config("cifar100-10t", ["method.name=sr2lora"]).train.lr == 0.0005  # only sdlora's section
    ina = load_config("imagenet-a-10t", ["method.name=sdlora"])
    assert (ina.train.lr, ina.train.loss) == (0.005, "ce")
    assert load_config("imagenet-a-10t", ["method.name=sr2lora"]).train.loss == "logitnorm"
    for preset in ("imagenet-r-5t", "imagenet-r-10t", "imagenet-r-20t"):  # InfLoRA's ImageNet-R reference setting
        cfg = load_config(preset, ["method.name=inflora"])
        assert (cfg.method.options["eps_start"], cfg.train.epochs) == (0.98, 50)
        assert load_config(preset, ["method.name=sr2lora"]).train.epochs == 20


def test_bad_per_method_sections_name_the_key(tmp_path):
    bad = {"per_method:\n  nosuch: {train: {lr: 0.1}}\n": "per_method.nosuch: unknown method",
           "per_method:\n  sdlora: 3\n": "per_method.sdlora: expected a mapping",
           "per_method:\n  sdlora: {method: {name: seqlora}}\n": "per_method.sdlora: may not set method.name",
           "per_method: [1]\n": "per_method: expected a mapping"}
    for i, (text, message) in enumerate(bad.items()):
        path = tmp_path / f"p{i}.yaml"
        path.write_text("base: smoke\n" + text)
        with pytest.raises(ConfigError, match=message):
            load_config(str(path), ["method.name=sdlora"])


@pytest.mark.parametrize("extra", [[], ["train.lr=0.001", "model.lora_targets=[k, v]"]])
def test_saved_config_reloads_unchanged(tmp_path, extra):
    """Resume and run reuse read config.yaml: the method's defaults must not apply again over saved values."""
    cfg = load_config("clipart-10t", ["method.name=sdlora", *extra])
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.to_dict() == cfg.to_dict()
    assert method_defaults_used(str(tmp_path / "config.yaml")) == {}


def test_config_command_shows_resolved_values_and_their_source(capsys):
    assert run_cli("config", "--preset", "clipart-10t", "method.name=sdlora") == 0
    out = capsys.readouterr().out
    assert out.startswith("# method sdlora's training defaults: train.optimizer=sgd, train.lr=0.01")
    assert "optimizer: sgd" in out and "schedule: constant" in out and "handover: reference" in out


@pytest.mark.parametrize("preset", PAPER)
def test_paper_presets_train_in_fp32(preset):
    """The references train in float32; a user can still ask for bf16."""
    assert PAPER and load_config(preset).train.precision == "fp32"
    assert load_config(preset, ["train.precision=bf16"]).train.precision == "bf16"
