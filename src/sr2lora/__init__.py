"""sr2lora: class-incremental learning on pre-trained ViTs with per-task LoRA (SR²-LoRA and baselines)."""

import os as _os

# Without a passive OpenMP wait policy, 2 threads run 2–6× slower than 1 on small CPU machines; this must be
# set before torch is imported to take effect.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
