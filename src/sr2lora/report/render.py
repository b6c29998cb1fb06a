"""Output formatting shared by the report and the analyses: Markdown/HTML tables and figure files.

Kept apart from :mod:`sr2lora.report` so that the analyses (drift, drift vs margin, robustness), which the
report also shows, format their tables and figures without importing the report.
"""

from __future__ import annotations

import html
from pathlib import Path

from ..core.atomic import atomic_path
from ..core.extras import require


def md_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (``|`` in cells escaped)."""
    esc = [[c.replace("|", "\\|") for c in row] for row in [head, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def html_table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table (cells escaped)."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed); without matplotlib a
    MissingExtraError names the ``report`` extra that installs it."""
    matplotlib = require("matplotlib", "report", "drawing figures (sr2lora report / analyze)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (110 dpi) and close a figure: the tail every report and drift plot shares."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:  # the temp name keeps the suffix, from which matplotlib takes the format
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
