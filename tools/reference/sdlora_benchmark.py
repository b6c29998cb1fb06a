"""Run the SD-LoRA authors' own training code on one of our offline benchmarks and score it as sr2lora does.

    python tools/reference/sdlora_benchmark.py --checkout /path/to/SD-Lora-CL [--commit SHA] \\
        --preset clipart-10t --out runs/ref-sdlora-clipart [overrides ...]

The question it answers: does SD-LoRA, run exactly as its authors' code runs it, forget less than sequential
LoRA on our data? ``Learner._train`` of github.com/WuYichen-97/SD-Lora-CL trains every task (SGD, momentum 0.9,
constant lr, its network rebuilt at every task with past branches normalised by ‖B‖‖A‖ and magnitudes
re-created at 0.8, LoRA on q and v, rank 10); after each task its network predicts over every class seen so
far, and the accuracy matrix, A_T, forgetting and plasticity are computed by sr2lora's metrics. The data, class
order, transforms, backbone, epochs, batch and lr are the preset's (with sdlora's defaults and the overrides),
so the run is comparable with ``sr2lora run --preset P method.name=sdlora ca.enabled=false`` (the reference has
no classifier alignment). Writes OUT/results.json.

What the wrapper changes: the same as tools/reference/fixture_sdlora.py (bookkeeping of ``incremental_train`` here,
``timm.create_model`` returning the preset's backbone, the backbone's ``out_dim``, CPU, LoRA factors kept in
memory between tasks), and the loaders are sr2lora's (seeded shuffle, the preset's transforms) yielding
(index, image, label) as the reference's data manager does. The new task's A keeps the reference's own random
initialisation.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from common import cpu_only, files_in_memory, parse_args, stub_modules


class Reordered(torch.utils.data.Dataset):
    """An sr2lora TaskView as the reference's datasets: (index, image, label)."""

    def __init__(self, view) -> None:  # noqa: ANN001
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int):  # noqa: ANN204
        x, y, idx = self.view[i]
        return idx, x, y


def main() -> None:
    extra = [a for a in sys.argv[1:] if "=" in a and not a.startswith("--")]
    sys.argv = [a for a in sys.argv if a not in extra]
    import argparse

    parser_args = sys.argv[1:]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="clipart-10t")
    pre.add_argument("--out", type=Path, required=True)
    pre.add_argument("--threads", type=int, default=1)
    known, rest = pre.parse_known_args(parser_args)
    sys.argv = [sys.argv[0], *rest]
    args = parse_args(__doc__.splitlines()[0], "WuYichen-97/SD-Lora-CL")
    torch.set_num_threads(known.threads)

    from sr2lora.config import load_config
    from sr2lora.core.seeding import task_seed
    from sr2lora.data.loaders import seeded_loader
    from sr2lora.data.run_data import prepare_data
    from sr2lora.data.scenario import TaskView
    from sr2lora.models.build import build_model, run_transforms
    from sr2lora.train.evaluation import task_indices
    from sr2lora.train.metrics import AccuracyTracker, task_accuracies

    cfg = load_config(known.preset, ["method.name=sdlora", "train.precision=fp32", *extra])
    tc = cfg.train
    assert (tc.optimizer, tc.schedule, cfg.model.lora_targets, cfg.model.rank) == ("sgd", "constant", ["q", "v"], 10), \
        "the reference trains with SGD at a constant lr on q and v at rank 10"
    data = prepare_data(cfg, single_task=False)
    sc = data.scenario
    torch.manual_seed(task_seed(cfg.seed, -1))
    vit = build_model(cfg, uses_lora=False).vit.eval()
    _, train_tf, test_tf = run_transforms(cfg, vit)
    dim = int(vit.num_features)

    stub_modules("einops", "scipy", "scipy.spatial", "scipy.spatial.distance")
    with cpu_only():
        import backbone.lora as ref_lora
        import models.sdlora as ref_sdlora
        import utils.inc_net as ref_net

        fake_timm = types.SimpleNamespace(create_model=lambda *a, **k: copy.deepcopy(vit))
        ref_sdlora.timm = ref_net.timm = fake_timm
        ref_sdlora.num_workers = 0
        update_network = ref_sdlora.Learner.update_network

        def update_network_width(self, index=True):  # noqa: ANN001
            bb = update_network(self, index)
            bb.out_dim = dim  # hard-coded 768 (ViT-B) in the reference
            return bb

        ref_sdlora.Learner.update_network = update_network_width
        config = {"memory_size": 0, "device": ["cpu"], "backbone_type": "vit_base_patch16_224",
                  "increment": cfg.scenario.increment, "filepath": tempfile.mkdtemp(prefix="sdlora-ref-") + "/",
                  "init_lr": tc.lr, "lrate": tc.lr, "init_milestones": [10000], "milestones": [10000],
                  "init_lr_decay": 0, "lrate_decay": 0, "init_epoch": tc.epochs, "epochs": tc.epochs,
                  "batch_size": tc.batch_size}
        tracker = AccuracyTracker(sc.num_tasks)
        magnitudes, seconds = [], []
        with files_in_memory(ref_lora, ref_net):
            torch.manual_seed(task_seed(cfg.seed, 0))
            learner = ref_sdlora.Learner(config)
            learner._network.backbone.out_dim = dim
            for t in range(sc.num_tasks):
                t0 = time.perf_counter()
                torch.manual_seed(task_seed(cfg.seed, t))
                lo, hi = sc.offsets[t], sc.offsets[t + 1]
                train_idx = task_indices(data.train_labels, data.train_index, lo, hi)
                train = seeded_loader(Reordered(TaskView(data.bundle.train, data.train_labels, train_idx, train_tf)),
                                      tc.batch_size, True, task_seed(cfg.seed, t, 1))
                eval_idx = task_indices(data.eval_labels, data.eval_index, 0, hi)
                test = seeded_loader(Reordered(TaskView(data.eval_images, data.eval_labels, eval_idx, test_tf)),
                                     tc.eval_batch_size, False, 0)
                learner._cur_task += 1  # incremental_train's bookkeeping, without its data manager
                learner._total_classes = learner._known_classes + sc.task_size(t)
                learner._network.update_fc(learner._total_classes)
                learner._train(train, test)
                learner.after_task()
                bb = learner._network.backbone
                magnitudes.append([bb.wrapped_param_prev[i].param.item() for i in range(t)]
                                  + [bb.wrapped_param[0].param.item()])
                learner._network.eval()
                preds, ys = [], []
                with torch.no_grad():
                    for _, x, y in test:
                        preds.append(learner._network(x)["logits"].argmax(-1))
                        ys.append(torch.as_tensor(y))
                pred, y = torch.cat(preds).numpy(), torch.cat(ys).numpy()
                row, overall, counts = task_accuracies(pred == y, sc.task_of_labels(y), t + 1)
                tracker.add(row, overall, counts)
                seconds.append(time.perf_counter() - t0)
                print(f"task {t + 1}/{sc.num_tasks}: accuracy on seen classes {overall:.2f}% "
                      f"magnitudes {[round(m, 3) for m in magnitudes[-1]]} ({seconds[-1]:.0f}s)", flush=True)
    res = {"method": "sdlora (authors' code)", "preset": cfg.preset, "seed": cfg.seed,
           "reference_repo": f"github.com/{args.repo}", "reference_commit": args.commit,
           "overrides": extra, "accuracy_matrix": tracker.matrix, "acc_curve": tracker.curve,
           **tracker.summary(), "magnitudes": magnitudes, "seconds": sum(seconds),
           "config": {"lr": tc.lr, "epochs": tc.epochs, "batch_size": tc.batch_size, "optimizer": tc.optimizer,
                      "targets": cfg.model.lora_targets, "classifier_alignment": False}}
    known.out.mkdir(parents=True, exist_ok=True)
    (known.out / "results.json").write_text(json.dumps(res, indent=1))
    print(f"sdlora (authors' code): final accuracy {res['final_acc']:.2f}%, forgetting {res['forgetting']:.2f}, "
          f"plasticity {res['plasticity']:.2f} -> {known.out / 'results.json'}")


if __name__ == "__main__":
    main()
