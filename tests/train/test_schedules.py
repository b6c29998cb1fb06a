"""The training pieces the engine composes: lr schedules by name, the optimiser factory, the train loaders."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

from sr2lora.config import TrainConfig, load_config
from sr2lora.core.distributed import DistContext
from sr2lora.core.errors import ConfigError
from sr2lora.data.loaders import seeded_loader, train_loader
from sr2lora.train.optim import OPTIMIZERS, build_optimizer
from sr2lora.train.schedules import SCHEDULES, cosine_step_lr, lr_at, reference_lr, schedule_names

BASE = 3e-3


def test_reference_schedule_is_the_closed_form_per_epoch():
    epochs = 5
    for epoch in range(epochs):
        want = BASE * math.cos(99 * math.pi * epoch / (200 * (epochs - 1)))
        for step in (0, 7, 40):  # per epoch: the step does not matter
            assert lr_at("reference", BASE, epoch, epochs, step, 50, 0) == pytest.approx(want, rel=1e-12)
    assert reference_lr(BASE, 0, epochs) == BASE
    # the last epoch ends just above zero: cos(99π/200) = sin(π/200)
    assert reference_lr(BASE, epochs - 1, epochs) == pytest.approx(BASE * math.sin(math.pi / 200), rel=1e-12)
    assert lr_at("reference", BASE, 0, 1, 3, 10, 0) == BASE  # one epoch: constant


def test_cosine_step_schedule_warms_up_then_decays_to_zero():
    total, warmup = 20, 4
    for step in range(warmup):  # linear warm-up reaching the base lr at its last step
        assert lr_at("cosine-step", BASE, 0, 2, step, total, warmup) == pytest.approx(BASE * (step + 1) / warmup)
    for step in range(warmup, total + 3):
        progress = min(1.0, (step - warmup) / (total - warmup))
        want = BASE * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr_at("cosine-step", BASE, 1, 2, step, total, warmup) == pytest.approx(want, rel=1e-12, abs=1e-18)
    assert cosine_step_lr(BASE, warmup, total, warmup) == BASE
    assert cosine_step_lr(BASE, (warmup + total) // 2, total, warmup) == pytest.approx(BASE / 2)
    assert cosine_step_lr(BASE, total, total, warmup) == pytest.approx(0.0, abs=1e-18)
    assert cosine_step_lr(BASE, 0, 10, 0) == BASE  # no warm-up: starts at the base lr


def test_constant_schedule_and_unknown_name():
    for epoch, step in ((0, 0), (3, 17), (9, 99)):
        assert lr_at("constant", BASE, epoch, 10, step, 100, 5) == BASE
    with pytest.raises(KeyError, match="cosine-step"):
        lr_at("linear", BASE, 0, 1, 0, 1, 0)


def test_config_accepts_exactly_the_registered_schedules_and_optimizers():
    assert set(schedule_names()) == set(SCHEDULES) == {"reference", "constant", "cosine-step"}
    for name in schedule_names():
        assert load_config("smoke", [f"train.schedule={name}"]).train.schedule == name
    with pytest.raises(ConfigError, match="train.schedule") as err:
        load_config("smoke", ["train.schedule=linear"])
    assert all(name in str(err.value) for name in schedule_names())
    for name in OPTIMIZERS:
        assert load_config("smoke", [f"train.optimizer={name}"]).train.optimizer == name
    with pytest.raises(ConfigError, match="train.optimizer") as err:
        load_config("smoke", ["train.optimizer=adamw"])
    assert all(name in str(err.value) for name in OPTIMIZERS)


def test_build_optimizer_kinds():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adam = build_optimizer(params, TrainConfig(optimizer="adam", lr=2e-3, weight_decay=0.01))
    assert type(adam) is torch.optim.Adam
    g = adam.param_groups[0]
    assert (g["lr"], g["betas"], g["weight_decay"]) == (2e-3, (0.9, 0.999), 0.01)
    assert g["params"] == params
    sgd = build_optimizer(params, TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.0))
    assert type(sgd) is torch.optim.SGD
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.1, 0.9, 0.0)
    with pytest.raises(ConfigError, match="train.optimizer"):
        build_optimizer(params, TrainConfig(optimizer="rmsprop"))


def _labels(loader) -> list[int]:
    return [int(v) for (batch,) in loader for v in batch]


def test_train_loader_one_process_is_the_seeded_shuffle():
    data = TensorDataset(torch.arange(23))
    loader, sampler = train_loader(data, 4, seed=11, dist=DistContext())
    assert sampler is None and loader.batch_size == 4
    first = _labels(loader)
    assert sorted(first) == list(range(23)) and first != list(range(23))
    assert first == _labels(seeded_loader(data, 4, True, 11))  # same seed, same order: runs are repeatable
    assert first != _labels(seeded_loader(data, 4, True, 12))


def test_train_loader_several_processes_split_the_task_and_the_batch():
    data = TensorDataset(torch.arange(24))
    shares = []
    for rank in range(2):
        loader, sampler = train_loader(data, 8, seed=5, dist=DistContext(rank=rank, world_size=2))
        assert isinstance(sampler, DistributedSampler) and loader.batch_size == 4  # the global batch stays 8
        sampler.set_epoch(0)
        shares.append(_labels(loader))
    assert sorted(shares[0] + shares[1]) == list(range(24))  # every image once per epoch, over both ranks
    with pytest.raises(ConfigError, match="train.batch_size"):
        train_loader(data, 7, seed=5, dist=DistContext(rank=0, world_size=2))
