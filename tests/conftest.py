"""Test-wide settings: no hub access, passive OpenMP threads, one shared smoke-run helper."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("SR2LORA_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path_factory, monkeypatch):
    """Tests get a fresh SR2LORA_CACHE; only tests marked `assets` use the real one (converted weights)."""
    if request.node.get_closest_marker("assets") is None:
        monkeypatch.setenv("SR2LORA_CACHE", str(tmp_path_factory.mktemp("cache")))


def run_cli(*args: str) -> int:
    from sr2lora.cli import main

    return main([str(a) for a in args])


def read_results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())
