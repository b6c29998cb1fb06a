"""Reports across runs, and every figure: the top of the stack, reading only the JSON documents runs write.

:func:`build_report` / :func:`write_report` (:mod:`.write`) collect finished runs (:mod:`.collect`), aggregate
seeds (:mod:`.aggregate`), render tables (:mod:`.tables`, :mod:`.render`) and figures (:mod:`.figures`), and add
the theory checks when the runs hold them (:mod:`.theory`).
"""

from .write import build_report, write_report

__all__ = ["build_report", "write_report"]
