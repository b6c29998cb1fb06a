"""Write tests/fixtures/reference/sr2lora.safetensors with the SR²-LoRA authors' own code.

    python tools/reference/fixture_sr2lora.py --checkout /path/to/SR-2-LoRA [--commit SHA]

Reference: github.com/FqWan24/SR-2-LoRA (``methods/dlora.py``'s ``DLoRA._train``/``train_function`` with its
``spectral_relation_loss``, ``_compute_mean`` and ``classifer_align``; ``models/sinet_dlora.py``,
``models/vit_dlora.py``). Two tasks of two classes on fixed batches of the micro ViT (tests/reference_setup.py):
task 1 trains with cross-entropy plus the spectral relation loss against the previous model; then the class
statistics and the classifier alignment (20 epochs, its hard-coded count) with a fixed sampling seed.
Recorded: the second step of task 1 (the first where the relation loss has a gradient: B_1 is zero before it):
the cross-entropy and relation losses and the gradients of A_1, B_1 (k and v) and the head; the LoRA factors
and heads after each task; the class means; the heads before and after alignment; the logits of a fixed batch;
and the relation loss alone with its gradient on stored per-layer features.

What the wrapper changes (nothing of the method): ``incremental_train``'s bookkeeping is done here, ``_train``
gets fixed-order batches and ``_compute_mean`` a minimal data manager over the same images; the class
statistics lists are pre-sized (the reference indexes empty lists like dicts and fails otherwise, a known bug
of that code); the ViT is built at the micro size with the micro weights; the first A of each task and the
heads start from values stored in the fixture; the optimiser is its SGD branch (momentum 0.9, one epoch: a
constant lr) because Adam's sign-like first steps turn float32 rounding on near-zero gradient entries into
±lr differences; ``optim.SGD``, ``F.cross_entropy`` and ``spectral_relation_loss`` record their values at the
recorded step; ``sklearn``/``scipy``/``matplotlib`` (imported, unused here) are empty modules.
"""

from __future__ import annotations

import types

import torch
from common import ensure_micro_vit, metadata, parse_args, setup, stub_modules, use_micro_encoder

TASKS, PER_TASK, PER_CLASS, BATCH, EPOCHS, LR, CA_SEED = 2, 2, 12, 8, 1, 0.05, 3
RECORDED_STEP = 1  # task 1's second step


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):  # noqa: ANN204
        return self.items[i]


class MicroDataManager:
    """The one call ``_compute_mean`` makes: a class's training images (test mode) as (index, image, label)."""

    def __init__(self, images: dict[int, torch.Tensor]) -> None:
        self.images = images

    def get_dataset(self, classes, source, mode, ret_data=False):  # noqa: ANN001, ANN201
        c = int(classes[0])
        items = [(i, x, c) for i, x in enumerate(self.images[c])]
        return None, None, ListDataset(items)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "FqWan24/SR-2-LoRA")
    ensure_micro_vit()
    micro = setup.micro_vit()  # before the reference registers its own models over timm's names
    stub_modules("sklearn", "sklearn.cluster", "scipy", "scipy.spatial", "scipy.spatial.distance",
                 "matplotlib", "matplotlib.pyplot")
    import methods.dlora as ref_dlora
    import models.sinet_dlora as ref_sinet

    dim, depth = micro.num_features, len(micro.blocks)
    use_micro_encoder(ref_sinet, micro)
    record: dict[str, torch.Tensor] = {}
    steps = [0]

    def recording() -> bool:
        return learner._cur_task == 1 and steps[0] == RECORDED_STEP

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):  # noqa: ANN001
            if recording():
                attn = [blk.attn for blk in learner._network.image_encoder.blocks]
                record["grad.A"] = torch.stack([torch.stack([a.lora_A_k[1].weight.grad, a.lora_A_v[1].weight.grad])
                                                for a in attn])
                record["grad.B"] = torch.stack([torch.stack([a.lora_B_k[1].weight.grad, a.lora_B_v[1].weight.grad])
                                                for a in attn])
                record["grad.head_w"] = learner._network.classifier_pool[1].weight.grad.clone()
            if learner._cur_task == 1:
                steps[0] += 1
            return super().step(closure)

    def cross_entropy(logits, targets, *a, **k):  # noqa: ANN001
        loss = torch.nn.functional.cross_entropy(logits, targets, *a, **k)
        if recording():
            record["loss.ce"] = loss.detach().reshape(1)
        return loss

    relation_loss = ref_dlora.spectral_relation_loss

    def recorded_relation_loss(rel_new, rel_old):  # noqa: ANN001
        loss = relation_loss(rel_new, rel_old)
        if recording():
            record["loss.relation"] = loss.detach().reshape(1)
        return loss

    ref_dlora.optim = types.SimpleNamespace(SGD=RecordingSGD, Adam=torch.optim.Adam,
                                            lr_scheduler=torch.optim.lr_scheduler)
    ref_dlora.F = types.SimpleNamespace(cross_entropy=cross_entropy, softmax=torch.nn.functional.softmax,
                                        log_softmax=torch.nn.functional.log_softmax,
                                        smooth_l1_loss=torch.nn.functional.smooth_l1_loss,
                                        normalize=torch.nn.functional.normalize)
    ref_dlora.spectral_relation_loss = recorded_relation_loss
    config = {"memory_size": 0, "memory_per_class": 0, "fixed_memory": False, "device": ["cpu"],
              "net_type": "sip", "optim": "sgd", "EPSILON": 1e-8, "init_epoch": EPOCHS, "init_lr": LR,
              "init_lr_decay": 0.1, "init_weight_decay": 0.0, "epochs": EPOCHS, "lrate": LR, "lrate_decay": 0.1,
              "batch_size": BATCH, "weight_decay": 0.0, "num_workers": 0, "lamb": 0.95, "lame": 1.0,
              "total_sessions": TASKS, "dataset": "micro", "init_cls": PER_TASK, "embd_dim": dim,
              "rank": setup.RANK, "disloss": None}
    torch.manual_seed(0)
    learner = ref_dlora.DLoRA(config)
    n_classes = TASKS * PER_TASK
    learner.cls_mean, learner.cls_cov = [None] * n_classes, [None] * n_classes  # see the docstring
    attn = [blk.attn for blk in learner._network.image_encoder.blocks]
    g = torch.Generator().manual_seed(5)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for t in range(TASKS):
            out[f"init.A.{t}"] = torch.stack([torch.stack([a.lora_A_k[t].weight, a.lora_A_v[t].weight]) for a in attn])
            out[f"init.head_w.{t}"] = torch.randn(PER_TASK, dim, generator=g) / dim**0.5
            out[f"init.head_b.{t}"] = torch.zeros(PER_TASK)
            learner._network.classifier_pool[t].weight.copy_(out[f"init.head_w.{t}"])
            learner._network.classifier_pool[t].bias.copy_(out[f"init.head_b.{t}"])
    eval_x, _ = setup.batches(99, list(range(n_classes)), 2, 64)[0]
    for t in range(TASKS):
        classes = list(range(t * PER_TASK, (t + 1) * PER_TASK))
        batches = setup.batches(30 + t, classes, PER_CLASS, BATCH)
        learner._cur_task += 1  # incremental_train's bookkeeping, without its data manager
        learner._total_classes = learner._known_classes + PER_TASK
        learner._network.update_fc(learner._total_classes)
        learner._train([(None, x, y) for x, y in batches], None)
        x_all, y_all = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
        learner._compute_mean(MicroDataManager({c: x_all[y_all == c] for c in classes}))
        out[f"AB.{t}"] = torch.stack([torch.stack([a.lora_B_k[t].weight @ a.lora_A_k[t].weight,
                                                   a.lora_B_v[t].weight @ a.lora_A_v[t].weight])
                                      for a in attn]).detach()
        if t > 0:
            w, b = (torch.cat([h.weight for h in learner._network.classifier_pool[: t + 1]]).detach().clone(),
                    torch.cat([h.bias for h in learner._network.classifier_pool[: t + 1]]).detach().clone())
            out["ca.weight_before"], out["ca.bias_before"] = w, b
            torch.manual_seed(CA_SEED)
            learner.classifer_align()
            heads = learner._network.classifier_pool[: t + 1]
            out["ca.weight"] = torch.cat([h.weight for h in heads]).detach()
            out["ca.bias"] = torch.cat([h.bias for h in heads]).detach()
        learner.after_task()
        learner._network.eval()
        with torch.no_grad():
            out[f"logits.{t}"] = learner._network.interface(eval_x)
    out["class_means"] = torch.stack([m.detach() for m in learner.cls_mean])
    out.update(record)
    # the loss function alone, on stored per-layer features (no model): exact to float32 rounding
    g = torch.Generator().manual_seed(11)
    h_old = torch.randn(6, depth, dim, generator=g) * 2
    h_new = (h_old + 0.3 * torch.randn(6, depth, dim, generator=g)).requires_grad_(True)
    rel = [torch.bmm(h, h.transpose(1, 2)) for h in (h_new, h_old)]
    unit = relation_loss(rel[0], rel[1])
    unit.backward()
    out.update({"unit.h_new": h_new.detach(), "unit.h_old": h_old, "unit.loss": unit.detach().reshape(1),
                "unit.grad": h_new.grad})
    path = setup.write_fixture("sr2lora", out, metadata(
        args, "fixture_sr2lora.py", tasks=TASKS, classes_per_task=PER_TASK, per_class=PER_CLASS, batch=BATCH,
        epochs=EPOCHS, lr=LR, optimizer="sgd", rank=setup.RANK, targets=["k", "v"], eval_seed=99,
        data_seeds="30 + task", recorded_step=RECORDED_STEP, ca_seed=CA_SEED, ca_epochs=20, ca_lr=0.005,
        ca_samples_factor=5))
    print(f"wrote {path}: losses ce {float(out['loss.ce']):.6f} relation {float(out['loss.relation']):.6g}")


if __name__ == "__main__":
    main()
