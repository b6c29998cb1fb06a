"""Write tests/fixtures/reference/inflora.safetensors with the InfLoRA authors' own code.

    python tools/reference/fixture_inflora.py --checkout /path/to/InfLoRA [--commit SHA]

Reference: github.com/liangyanshuo/InfLoRA (``methods/inflora.py``'s ``InfLoRA._train`` and
``update_DualGPM``, ``models/sinet_inflora.py``, ``models/vit_inflora.py``). ``_train`` runs five tasks of two
classes on fixed batches of the micro ViT (tests/reference_setup.py), its ViT loaded with the micro weights:
the representation matrix, A_t from the SVD of the projected matrix, its SGD branch (see OPTIM), the
representation after training and the DualGPM memory update. Recorded per task: A_t (every block), the trained
B_t of k and v, the memory (basis and kind) and its size, the logits of a fixed evaluation batch; for tasks 0 and 1 the
loss and the gradients of the first step; and the threshold schedule.

What the wrapper changes (nothing of the method): ``incremental_train``'s bookkeeping (task counter, class
counts, ``update_fc``) is done here instead of through a data manager, and ``_train`` gets fixed-order batches;
the ViT is built at the micro size (``_create_vision_transformer`` would download ViT-B weights) and loaded with
the micro weights; every head starts from values stored in the fixture; ``optim.Adam``/``optim.SGD`` and ``F.cross_entropy``
record the first step of tasks 0 and 1; ``update_DualGPM`` gets its matrices as float32 numpy arrays (what numpy of
its time made of the torch tensors it is passed; today's numpy hands torch tensors back); ``ipdb``, ``sklearn`` and ``scipy`` (imported, not called on this path) are
empty modules; the old timm internals it imports resolve through timm 1.0's compatibility modules.
"""

from __future__ import annotations

import types

import torch
from common import ensure_micro_vit, metadata, parse_args, setup, stub_modules, use_micro_encoder

# thresholds near 1: the micro ViT's token second moment has one dominant direction (99.4% of Σλ²), and the
# fixture should exercise the memory update over several directions
# The reference's SGD branch (momentum 0.9, CosineAnnealingLR per epoch: one epoch is a constant lr): Adam's
# first steps are ±lr on every entry whatever its size, so float32 rounding on near-zero gradient entries (the
# keys' at this random init) flips them and trajectories part after one step; SGD compares them step by step.
TASKS, PER_TASK, PER_CLASS, BATCH, EPOCHS, LR, EPS, OPTIM = 5, 2, 16, 8, 1, 0.05, (0.9995, 1.0), "sgd"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "liangyanshuo/InfLoRA")
    ensure_micro_vit()
    micro = setup.micro_vit()  # before the reference registers its own models over timm's names
    stub_modules("ipdb", "sklearn", "sklearn.cluster", "scipy", "scipy.spatial", "scipy.spatial.distance")
    import methods.inflora as ref_inflora
    import models.sinet_inflora as ref_sinet

    dim = micro.num_features
    use_micro_encoder(ref_sinet, micro)
    record: dict[str, torch.Tensor] = {}

    def remember_first_step() -> None:
            t = learner._cur_task
            if t <= 1 and f"grad.B.{t}" not in record:
                attn = [blk.attn for blk in learner._network.image_encoder.blocks]
                record[f"grad.B.{t}"] = torch.stack([torch.stack([a.lora_B_k[t].weight.grad,
                                                                  a.lora_B_v[t].weight.grad]) for a in attn])
                record[f"grad.head_w.{t}"] = learner._network.classifier_pool[t].weight.grad.clone()

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):  # noqa: ANN001
            remember_first_step()
            return super().step(closure)

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):  # noqa: ANN001
            remember_first_step()
            return super().step(closure)

    def cross_entropy(logits, targets, *a, **k):  # noqa: ANN001
        loss = torch.nn.functional.cross_entropy(logits, targets, *a, **k)
        if learner._cur_task <= 1 and f"loss.{learner._cur_task}" not in record:
            record[f"loss.{learner._cur_task}"] = loss.detach().reshape(1)
        return loss

    ref_inflora.optim = types.SimpleNamespace(Adam=RecordingAdam, SGD=RecordingSGD,
                                              lr_scheduler=torch.optim.lr_scheduler)
    ref_inflora.F = types.SimpleNamespace(cross_entropy=cross_entropy)
    config = {"memory_size": 0, "memory_per_class": 0, "fixed_memory": False, "device": ["cpu"],
              "net_type": "sip", "optim": OPTIM, "EPSILON": 1e-8, "init_epoch": EPOCHS, "init_lr": LR,
              "init_lr_decay": 0.1, "init_weight_decay": 0.0, "epochs": EPOCHS, "lrate": LR, "lrate_decay": 0.1,
              "batch_size": BATCH, "weight_decay": 0.0, "num_workers": 0, "lamb": EPS[0], "lame": EPS[1],
              "total_sessions": TASKS, "dataset": "micro", "init_cls": PER_TASK, "embd_dim": dim,
              "rank": setup.RANK}
    update_dualgpm = ref_inflora.InfLoRA.update_DualGPM

    def update_dualgpm_numpy(self, mat_list):  # noqa: ANN001
        # numpy of its time turned the torch matrices into float32 arrays; today's returns torch tensors
        return update_dualgpm(self, [m.numpy() for m in mat_list])

    ref_inflora.InfLoRA.update_DualGPM = update_dualgpm_numpy
    torch.manual_seed(0)
    learner = ref_inflora.InfLoRA(config)
    g = torch.Generator().manual_seed(5)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for t in range(TASKS):
            out[f"init.head_w.{t}"] = torch.randn(PER_TASK, dim, generator=g) / dim**0.5
            out[f"init.head_b.{t}"] = torch.zeros(PER_TASK)
            learner._network.classifier_pool[t].weight.copy_(out[f"init.head_w.{t}"])
            learner._network.classifier_pool[t].bias.copy_(out[f"init.head_b.{t}"])
    eval_x, _ = setup.batches(99, list(range(TASKS * PER_TASK)), 2, 64)[0]
    for t in range(TASKS):
        classes = list(range(t * PER_TASK, (t + 1) * PER_TASK))
        data = [(None, x, y) for x, y in setup.batches(20 + t, classes, PER_CLASS, BATCH)]
        learner._cur_task += 1  # incremental_train's bookkeeping, without its data manager
        learner._total_classes = learner._known_classes + PER_TASK
        learner._network.update_fc(learner._total_classes)
        learner._train(data, data)
        learner.after_task()
        attn = [blk.attn for blk in learner._network.image_encoder.blocks]
        out[f"A.{t}"] = torch.stack([a.lora_A_k[t].weight.detach() for a in attn])
        assert all(torch.equal(a.lora_A_k[t].weight, a.lora_A_v[t].weight) for a in attn)
        out[f"BA.{t}"] = torch.stack([torch.stack([a.lora_B_k[t].weight @ a.lora_A_k[t].weight,
                                                   a.lora_B_v[t].weight @ a.lora_A_v[t].weight]) for a in attn]).detach()
        out[f"memory_size.{t}"] = torch.tensor(
            [f.shape[1] if kind == "remove" else f.shape[0] - f.shape[1]
             for f, kind in zip(learner.feature_list, learner.project_type)])
        out[f"retain.{t}"] = torch.tensor([kind == "retain" for kind in learner.project_type])
        for layer, f in enumerate(learner.feature_list):
            out[f"basis.{t}.{layer}"] = torch.as_tensor(f).float()
        learner._network.eval()
        with torch.no_grad():
            out[f"logits.{t}"] = learner._network.interface(eval_x)
    out.update(record)
    path = setup.write_fixture("inflora", out, metadata(
        args, "fixture_inflora.py", tasks=TASKS, classes_per_task=PER_TASK, per_class=PER_CLASS, batch=BATCH,
        epochs=EPOCHS, lr=LR, eps=list(EPS), rank=setup.RANK, targets=["k", "v"], eval_seed=99,
        data_seeds="20 + task", optimizer=OPTIM))
    print(f"wrote {path}")
    for t in range(TASKS):
        print(f"task {t}: memory size per block {out[f'memory_size.{t}'].tolist()}")


if __name__ == "__main__":
    main()
