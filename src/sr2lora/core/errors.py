"""The errors sr2lora raises for a problem the user can fix: one base class and one kind per stage.

Each message is the whole story (which key, file or stage, and what to do), so the command line prints it without
a traceback and exits with status 2; it catches :class:`Sr2loraError` and nothing else of ours. This module
imports nothing from the package, so every layer can raise these without an import cycle.
"""

from __future__ import annotations


class Sr2loraError(Exception):
    """Base of every user-facing sr2lora error."""


class ConfigError(Sr2loraError, ValueError):
    """A configuration value is invalid; the message names the key and what would be valid."""


class DataError(Sr2loraError, ValueError):
    """A dataset is missing, malformed or does not fit the scenario; the message names the file or folder."""


class WeightsError(Sr2loraError, RuntimeError):
    """Pre-trained weights cannot be found, read or loaded into the model."""


class CheckpointError(Sr2loraError, RuntimeError):
    """A run folder's checkpoint is missing, damaged, or belongs to another config or dataset."""


class TrainingError(Sr2loraError, RuntimeError):
    """Training cannot continue (a non-finite loss, statistics or classifier); the message names the stage."""


class OutputError(Sr2loraError, RuntimeError):
    """An output path cannot be used (not writable, inside the data, owned by another run)."""


class AssetsError(Sr2loraError, RuntimeError):
    """An offline asset (converted weights, rendered data) is missing or cannot be built."""


class MissingExtraError(Sr2loraError, ImportError):
    """An optional dependency is not installed; the message names the extra (``pip install 'sr2lora[...]'``)."""
