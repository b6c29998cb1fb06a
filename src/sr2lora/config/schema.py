"""The typed run configuration: one dataclass per section of a run, and which keys are runtime-only.

A run is fully described by one :class:`RunConfig`. Loading it from presets and overrides is
:mod:`sr2lora.config.load`; range checks are :mod:`sr2lora.config.checks`. Method-specific options live under
``method.`` and are declared by each method (see :mod:`sr2lora.methods`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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
    """Drift analysis during training (sr2lora.analysis.drift): RUN/drift.json after every task; off by default."""

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



# Keys that change where or how fast a run computes, not what it computes: a finished run is reused whatever they
# are, and the report never groups runs by them. On resume, RESUME_FREE_KEYS may change freely (they change no
# number: augmentations are seeded per item, not per worker; the dataset's identity is checked whatever the root);
# train.device, train.threads and train.eval_batch_size change the last bits of the numbers, so a resume must
# compute as the checkpoint's tasks did (sr2lora.launch.check_same_compute; --allow-other-compute continues
# anyway, with where each task computed recorded in results.json as task_compute).
RUNTIME_KEYS = frozenset({"train.device", "train.threads", "data.num_workers", "data.root", "train.eval_batch_size"})
RESUME_FREE_KEYS = frozenset({"data.num_workers", "data.root"})


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
