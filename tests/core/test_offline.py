"""The one offline switch: SR2LORA_OFFLINE or HF_HUB_OFFLINE, either alone, both, and the values they accept."""

import pytest

from sr2lora.config import DataConfig
from sr2lora.core.errors import DataError, WeightsError
from sr2lora.core.offline import is_offline, offline_reason
from sr2lora.data import build_dataset
from sr2lora.models.backbone import create_vit


@pytest.fixture
def env(monkeypatch):
    """Neither variable set; the test sets what it needs (the suite itself runs offline)."""
    monkeypatch.delenv("SR2LORA_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return monkeypatch


def test_unset_is_online(env):
    assert is_offline() is False and offline_reason() is None


@pytest.mark.parametrize("name", ["SR2LORA_OFFLINE", "HF_HUB_OFFLINE"])
@pytest.mark.parametrize("value", ["1", "true", "TRUE", "Yes", "on", " 1 "])
def test_either_variable_alone_switches_offline(env, name, value):
    env.setenv(name, value)
    assert is_offline() is True
    assert offline_reason() == f"{name}={value}"


@pytest.mark.parametrize("name", ["SR2LORA_OFFLINE", "HF_HUB_OFFLINE"])
@pytest.mark.parametrize("value", ["0", "false", "no", "off", "", "maybe"])
def test_other_values_are_online(env, name, value):
    env.setenv(name, value)
    assert is_offline() is False and offline_reason() is None


def test_both_set_names_both(env):
    env.setenv("SR2LORA_OFFLINE", "1")
    env.setenv("HF_HUB_OFFLINE", "true")
    assert is_offline() and offline_reason() == "SR2LORA_OFFLINE=1, HF_HUB_OFFLINE=true"
    # one true value is enough: a false SR2LORA_OFFLINE does not undo HF_HUB_OFFLINE (the hub would refuse anyway)
    env.setenv("SR2LORA_OFFLINE", "0")
    assert is_offline() and offline_reason() == "HF_HUB_OFFLINE=true"


@pytest.mark.parametrize("name", ["SR2LORA_OFFLINE", "HF_HUB_OFFLINE"])
def test_hub_weights_refused_under_either_variable(env, name):
    env.setenv(name, "1")
    with pytest.raises(WeightsError, match=rf"offline \({name}=1\).*model.pretrained=/path/to/weights"):
        create_vit("vit_tiny_patch16_224", pretrained=True)


@pytest.mark.parametrize("name", ["SR2LORA_OFFLINE", "HF_HUB_OFFLINE"])
def test_split_list_download_skipped_under_either_variable(env, name, tmp_path):
    from PIL import Image

    env.setenv("SR2LORA_CACHE", str(tmp_path / "cache"))
    env.setenv(name, "yes")
    folder = tmp_path / "imagenet-r" / "n01443537"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "a.jpg")
    with pytest.raises(DataError, match=rf"Download skipped \(offline: {name}=yes\)"):
        build_dataset(DataConfig(dataset="imagenet-r", root=str(tmp_path / "imagenet-r")))
