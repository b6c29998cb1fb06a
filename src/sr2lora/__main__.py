"""``python -m sr2lora`` (and ``torchrun -m sr2lora``) is the command line."""

import sys

from .cli import main

sys.exit(main())
