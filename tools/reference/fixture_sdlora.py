"""Write tests/fixtures/reference/sdlora.safetensors with the SD-LoRA authors' own code.

    python tools/reference/fixture_sdlora.py --checkout /path/to/SD-Lora-CL [--commit SHA]

Reference: github.com/WuYichen-97/SD-Lora-CL (``models/sdlora.py``'s ``Learner``, ``backbone/lora.py``'s
``LoRA_ViT_timm``). Its ``Learner._train`` trains three tasks of two classes on fixed batches of the micro ViT
(tests/reference_setup.py) with its own recipe (SGD, momentum 0.9, constant lr, the network rebuilt at every
task with past branches normalised by ‖B‖‖A‖ and magnitudes re-created at 0.8). Recorded per task: the
magnitudes after training, the effective q and v updates of every block (probed through the reference's own qkv
module), the logits of a fixed evaluation batch; for task 1 also the loss and the gradients of the first step.

What the wrapper changes (nothing of the method): ``incremental_train``'s bookkeeping is done here instead of
through a data manager (the same three assignments) and ``_train`` gets fixed-order batches instead of a
shuffling DataLoader; ``timm.create_model`` returns the micro ViT; ``.cuda()`` is a no-op (CPU); ``einops`` and ``scipy`` (imported, not called on this path) are empty modules; the LoRA
factors it saves between tasks stay in memory instead of pickled files; the backbone's ``out_dim`` (hard-coded 768, ViT-B's width) is the micro ViT's; the new task's A and head rows are
overwritten right after the reference initialises them with values stored in the fixture (so that our code can
start from the same numbers); ``optim.SGD`` and ``F.cross_entropy`` record the first step's gradients and loss.
"""

from __future__ import annotations

import copy
import tempfile
import types

import torch
from common import cpu_only, ensure_micro_vit, files_in_memory, metadata, parse_args, setup, stub_modules

TASKS, PER_TASK, PER_CLASS, BATCH, EPOCHS, LR = 3, 2, 6, 4, 2, 0.05


def init_values(dim: int, depth: int) -> dict[str, torch.Tensor]:
    """Seeded starting values of every task's A (q and v of each block) and head rows, shared with our side."""
    g = torch.Generator().manual_seed(7)
    bound = 1 / dim**0.5  # Kaiming-uniform(a=√5) of a (r × d) Linear, as both codes draw it
    out = {}
    for t in range(TASKS):
        out[f"init.A.{t}"] = (torch.rand(depth, 2, setup.RANK, dim, generator=g) * 2 - 1) * bound
        out[f"init.head_w.{t}"] = torch.randn(PER_TASK, dim, generator=g) / dim**0.5
        out[f"init.head_b.{t}"] = torch.zeros(PER_TASK)
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "WuYichen-97/SD-Lora-CL")
    ensure_micro_vit()
    stub_modules("einops", "scipy", "scipy.spatial", "scipy.spatial.distance")  # imported, never called here
    with cpu_only():
        import backbone.lora as ref_lora
        import models.sdlora as ref_sdlora
        import utils.inc_net as ref_net

        micro = setup.micro_vit()
        fake_timm = types.SimpleNamespace(create_model=lambda *a, **k: copy.deepcopy(micro))
        ref_sdlora.timm = ref_net.timm = fake_timm
        dim, depth = micro.num_features, len(micro.blocks)
        init = init_values(dim, depth)
        record: dict[str, torch.Tensor] = {}

        class RecordingSGD(torch.optim.SGD):
            """The reference's optimiser; remembers the gradients of its first step in task 1."""

            def step(self, closure=None):  # noqa: ANN001
                if learner._cur_task == 1 and "grad.alpha" not in record:
                    bb = learner._network.backbone
                    record["grad.alpha"] = torch.cat([bb.wrapped_param_prev[0].param.grad, bb.wrapped_param[0].param.grad])
                    record["grad.A"] = torch.stack([a.weight.grad for a in bb.w_As]).reshape(depth, 2, setup.RANK, dim)
                    record["grad.B"] = torch.stack([b.weight.grad for b in bb.w_Bs]).reshape(depth, 2, dim, setup.RANK)
                    record["grad.head_w"] = learner._network.fc.weight.grad[PER_TASK:].clone()
                return super().step(closure)

        def cross_entropy(logits, targets, *a, **k):  # noqa: ANN001
            loss = torch.nn.functional.cross_entropy(logits, targets, *a, **k)
            if learner._cur_task == 1 and "loss" not in record:
                record["loss"] = loss.detach().reshape(1)
            return loss

        ref_sdlora.optim = types.SimpleNamespace(SGD=RecordingSGD, lr_scheduler=torch.optim.lr_scheduler)
        ref_sdlora.F = types.SimpleNamespace(cross_entropy=cross_entropy)

        def set_task_init(bb, t: int) -> None:
            with torch.no_grad():
                for i, a in enumerate(bb.w_As):
                    a.weight.copy_(init[f"init.A.{t}"][i // 2, i % 2])

        update_network = ref_sdlora.Learner.update_network

        def update_network_with_init(self, index=True):  # noqa: ANN001
            bb = update_network(self, index)
            bb.out_dim = dim  # hard-coded 768 (ViT-B) in the reference
            set_task_init(bb, self._cur_task)
            return bb

        ref_sdlora.Learner.update_network = update_network_with_init
        tmp = tempfile.mkdtemp(prefix="sdlora-ref-") + "/"
        config = {"memory_size": 0, "device": ["cpu"], "backbone_type": "vit_base_patch16_224",
                  "increment": PER_TASK, "filepath": tmp, "init_lr": LR, "lrate": LR, "init_milestones": [10000],
                  "milestones": [10000], "init_lr_decay": 0, "lrate_decay": 0, "init_epoch": EPOCHS,
                  "epochs": EPOCHS, "batch_size": BATCH}
        eval_x, _ = setup.batches(99, list(range(TASKS * PER_TASK)), 2, 64)[0]
        with files_in_memory(ref_lora, ref_net):
            torch.manual_seed(0)
            learner = ref_sdlora.Learner(config)
            learner._network.backbone.out_dim = dim  # hard-coded 768 (ViT-B) in the reference
            set_task_init(learner._network.backbone, 0)
            out: dict[str, torch.Tensor] = {}
            for t in range(TASKS):
                classes = list(range(t * PER_TASK, (t + 1) * PER_TASK))
                data = [(None, x, y) for x, y in setup.batches(10 + t, classes, PER_CLASS, BATCH)]
                # incremental_train's bookkeeping, without its data manager
                learner._cur_task += 1
                learner._total_classes = learner._known_classes + PER_TASK
                learner._network.update_fc(learner._total_classes)
                with torch.no_grad():
                    learner._network.fc.weight[t * PER_TASK:] = init[f"init.head_w.{t}"]
                    learner._network.fc.bias[t * PER_TASK:] = init[f"init.head_b.{t}"]
                learner._train(data, data)
                learner.after_task()
                bb = learner._network.backbone
                out[f"alpha.{t}"] = torch.cat(
                    [bb.wrapped_param_prev[i].param.detach() for i in range(t)] + [bb.wrapped_param[0].param.detach()])
                out[f"delta.{t}"] = probe_deltas(bb.lora_vit, dim)
                learner._network.eval()
                with torch.no_grad():
                    out[f"logits.{t}"] = learner._network(eval_x)["logits"]
        out.update(record)
        out.update(init)
    path = setup.write_fixture("sdlora", out, metadata(
        args, "fixture_sdlora.py", tasks=TASKS, classes_per_task=PER_TASK, per_class=PER_CLASS, batch=BATCH,
        epochs=EPOCHS, lr=LR, optimizer="sgd momentum 0.9, no weight decay, constant lr", rank=setup.RANK,
        targets=["q", "v"], eval_seed=99, data_seeds="10 + task"))
    print(f"wrote {path}")
    for t in range(TASKS):
        print(f"task {t}: magnitudes {[round(v, 4) for v in out[f'alpha.{t}'].tolist()]}")


@torch.no_grad()
def probe_deltas(vit: torch.nn.Module, dim: int) -> torch.Tensor:
    """(blocks, 2, d, d): the q and v rows of each block's qkv module minus its frozen Linear, read by feeding
    the identity through the reference's module (it is linear in its input)."""
    eye = torch.eye(dim).unsqueeze(0)
    rows = []
    for blk in vit.blocks:
        qkv = blk.attn.qkv
        delta = (qkv(eye) - qkv.qkv(eye))[0].T  # (3d, d): column j is the update's response to e_j
        rows.append(torch.stack([delta[:dim], delta[2 * dim :]]))
    return torch.stack(rows)


if __name__ == "__main__":
    main()
