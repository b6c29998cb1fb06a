"""``ncm``: cosine nearest class mean of the final feature (SimpleCIL's classifier).

Each new class's mean feature is computed once, with the model after its task (float64 sums), and never
recomputed. A feature f is assigned to argmax_c cos(f, μ_c): the logits are the cosines, i.e. a linear layer with
the L2-normalised means as weights (no bias) applied to the L2-normalised feature. Because ‖f‖ > 0 does not
change the argmax, the same layer on the raw feature predicts the same classes (how ``export`` writes it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Classifier, register_classifier


class CosineHead(nn.Module):
    """logits = normalize(f) · Wᵀ with W the L2-normalised class means (C, d)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x.float(), dim=-1), self.weight)


@register_classifier
class NearestClassMean(Classifier):
    kind = "ncm"

    def __init__(self, cfg, dim, offsets) -> None:
        super().__init__(cfg, dim, offsets)
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}

    @torch.no_grad()
    def fit_task(self, t, features, labels, classes, class_names=None) -> None:
        self.drop_cached_head()
        features = features.double().cpu()
        labels = labels.cpu()
        for c in classes:
            x = features[labels == c]
            if len(x) == 0:
                raise ValueError(f"class {c} has no training features; cannot compute its mean")
            self.sums[int(c)] = x.sum(0)
            self.counts[int(c)] = len(x)

    def means(self, num_classes: int) -> torch.Tensor:
        """(C, d) float64 class means of labels 0..num_classes−1."""
        return torch.stack([self.sums[c] / self.counts[c] for c in range(num_classes)])

    def weight(self, t: int) -> torch.Tensor:
        """The normalised class means of the classes seen after task t, (C_t, d) float32."""
        return F.normalize(self.means(self.offsets[t + 1]), dim=-1).float()

    def head(self, heads, t: int) -> nn.Module:
        dev = next(heads.parameters()).device if len(heads) else torch.device("cpu")
        return CosineHead(self.weight(t)).to(dev)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for c in self.sums:
            out[f"sum.{c}"] = self.sums[c]
            out[f"count.{c}"] = torch.tensor([self.counts[c]])
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for k, v in tensors.items():
            kind, _, c = k.partition(".")
            if kind == "sum":
                self.sums[int(c)] = v.double()
            elif kind == "count":
                self.counts[int(c)] = int(v.item())
