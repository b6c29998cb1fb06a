"""Class-incremental metrics, in percent.

With T tasks, ``matrix[t][j]`` is the accuracy on task j's test classes after training task t (j ≤ t; None above
the diagonal), predictions taken over every class seen so far. ``a_t`` is the accuracy on all seen test samples
after task t (so the last row averages to ``a_T`` weighted by the number of test samples of each task).

- final accuracy  A_T = a_T
- average incremental accuracy  Ā = mean_t a_t
- forgetting  F = mean_{j<T} ( max_{t<T} matrix[t][j] − matrix[T][j] )   (Chaudhry et al. 2018)
- backward transfer  BWT = mean_{j<T} ( matrix[T][j] − matrix[j][j] )   (Lopez-Paz & Ranzato 2017)
- plasticity  P = mean_j matrix[j][j]: accuracy on each task right after learning it
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def task_accuracies(
    correct: np.ndarray, label_task: np.ndarray, num_seen_tasks: int
) -> tuple[list[float], float, list[int]]:
    """(per-task accuracy for tasks 0..k−1, accuracy on all, per-task sample counts) in percent."""
    row, counts = [], []
    for j in range(num_seen_tasks):
        mask = label_task == j
        counts.append(int(mask.sum()))
        row.append(float(100.0 * correct[mask].mean()) if mask.any() else float("nan"))
    overall = float(100.0 * correct.mean()) if len(correct) else float("nan")
    return row, overall, counts


@dataclass
class AccuracyTracker:
    """Accumulates one row per task and derives the summary metrics."""

    num_tasks: int
    matrix: list[list[float | None]] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def add(self, row: list[float], overall: float, counts: list[int]) -> None:
        self.matrix.append(list(row) + [None] * (self.num_tasks - len(row)))
        self.curve.append(overall)
        self.counts = counts

    def summary(self) -> dict:
        return summarize(self.matrix, self.curve)


def summarize(matrix: list[list[float | None]], curve: list[float]) -> dict:
    """Final, average, forgetting, BWT and plasticity from an accuracy matrix and the a_t curve."""
    k = len(curve)
    m = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=np.float64)
    out = {
        "final_acc": float(curve[-1]) if k else None,
        "avg_acc": float(np.mean(curve)) if k else None,
        "plasticity": float(np.mean(np.diag(m[:k, :k]))) if k else None,
        "forgetting": 0.0,
        "bwt": 0.0,
    }
    if k > 1:
        last = m[k - 1, : k - 1]
        best = np.nanmax(m[: k - 1, : k - 1], axis=0)
        out["forgetting"] = float(np.mean(best - last))
        out["bwt"] = float(np.mean(last - np.diag(m[: k - 1, : k - 1])))
    return out
