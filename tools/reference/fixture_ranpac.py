"""Write tests/fixtures/reference/ranpac.safetensors with the RanPAC authors' own code.

    python tools/reference/fixture_ranpac.py --checkout /path/to/RanPAC [--commit SHA]

Reference: github.com/RanPAC/RanPAC (``RanPAC.py``'s ``Learner.replace_fc`` and ``optimise_ridge_parameter``,
``setup_RP``'s Gaussian projection). Three tasks of three classes: the micro ViT's [CLS] features of fixed
images (tests/reference_setup.py) go through the reference's head update after each task: random projection
(M = 64) and ReLU, the accumulated Gram matrix G and class sums Q, the λ it selects on the task's own samples
(first 80 % to fit, last 20 % to score, mean squared error over its grid 10⁻⁸…10⁸) and the ridge weights.
Recorded per task: the features and labels fed in, G, Q, the chosen λ and the head's weights; and the
projection matrix.

What the wrapper changes (nothing of the method): ``replace_fc`` runs on a learner whose network is the minimum
it touches (``convnet`` = identity over the stored features, ``fc`` with the projection); ``.cuda()`` and
``.to('cuda')`` stay on the CPU; ``optimise_ridge_parameter`` records the λ it returns.
"""

from __future__ import annotations

import torch
from common import cpu_only, ensure_micro_vit, metadata, parse_args, setup

TASKS, PER_TASK, PER_CLASS, M, SEED = 3, 3, 10, 64, 4


class Head(torch.nn.Module):
    """What ``replace_fc`` reads and writes of the reference's CosineLinear head."""

    def __init__(self, classes: int, w_rand: torch.Tensor) -> None:
        super().__init__()
        self.use_RP, self.W_rand = True, w_rand
        self.weight = torch.nn.Parameter(torch.zeros(classes, w_rand.shape[1]))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "RanPAC/RanPAC")
    ensure_micro_vit()
    vit = setup.micro_vit()
    with cpu_only():
        import RanPAC as ref

        chosen: list[float] = []
        optimise = ref.Learner.optimise_ridge_parameter

        def recorded(self, features, y):  # noqa: ANN001
            lam = optimise(self, features, y)
            chosen.append(float(lam))
            return lam

        ref.Learner.optimise_ridge_parameter = recorded
        learner = ref.Learner.__new__(ref.Learner)  # only replace_fc's state, no backbone download
        learner.args = {"use_RP": True, "M": M}
        learner.total_classnum = TASKS * PER_TASK
        torch.manual_seed(SEED)
        learner.W_rand = torch.randn(vit.num_features, M)  # setup_RP's draw
        learner.Q, learner.G = torch.zeros(M, learner.total_classnum), torch.zeros(M, M)
        out: dict[str, torch.Tensor] = {"W_rand": learner.W_rand.clone()}
        for t in range(TASKS):
            classes = list(range(t * PER_TASK, (t + 1) * PER_TASK))
            data = setup.batches(40 + t, classes, PER_CLASS, 8)
            with torch.no_grad():
                feats = [(vit(x), y) for x, y in data]  # [CLS] after the final norm, as our feature
            net = torch.nn.Module()
            net.convnet = torch.nn.Identity()
            net.fc = Head((t + 1) * PER_TASK, learner.W_rand)
            learner._network = net
            learner.replace_fc([(None, f, y) for f, y in feats])
            out[f"features.{t}"] = torch.cat([f for f, _ in feats])
            out[f"labels.{t}"] = torch.cat([y for _, y in feats])
            out[f"G.{t}"], out[f"Q.{t}"] = learner.G.clone(), learner.Q.clone()
            out[f"weight.{t}"] = net.fc.weight.detach().clone()
        out["lambda"] = torch.tensor(chosen, dtype=torch.float64)
    path = setup.write_fixture("ranpac", out, metadata(
        args, "fixture_ranpac.py", tasks=TASKS, classes_per_task=PER_TASK, per_class=PER_CLASS, rp_dim=M,
        projection_seed=SEED, lambdas="10^-8..10^8", data_seeds="40 + task", val_split="last 20% of the task"))
    print(f"wrote {path}: chosen lambdas {chosen}")


if __name__ == "__main__":
    main()
