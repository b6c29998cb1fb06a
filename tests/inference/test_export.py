"""Using a finished run: `load_run`, `sr2lora export` (one plain timm model) and `sr2lora predict`."""

import json
import shutil

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms as T

from conftest import PRECISIONS, read_results, run_cli
from sr2lora.core.errors import CheckpointError
from sr2lora.data.run_data import prepare_data

LOGIT_TOL = 1e-4  # exported timm model vs load_run model, abs (measured ~6e-6 on logits of magnitude ~20)


@pytest.fixture
def base_run(smoke_run):
    """The shared smoke run (fp32 training) of the tests that only need some finished run."""
    return smoke_run()[0]


def transform_from_spec(spec: dict) -> T.Compose:
    """The sidecar's test transform rebuilt with torchvision only (what a user without sr2lora does)."""
    steps = [
        T.Resize(spec["resize"], interpolation=T.InterpolationMode(spec["interpolation"])),
        T.CenterCrop(spec["center_crop"]),
        T.ToTensor(),
    ]
    if spec["mean"] is not None:
        steps.append(T.Normalize(spec["mean"], spec["std"]))
    return T.Compose(steps)


def timm_from_sidecar(weights, side: dict) -> torch.nn.Module:
    load = dict(side["load"])
    load["pretrained_cfg_overlay"] = {**load["pretrained_cfg_overlay"], "file": str(weights)}
    return timm.create_model(side["timm_model"], **load, **side["timm_kwargs"]).eval()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_export_equals_run_and_reported_accuracy(smoke_run, tmp_path, precision):
    """Trained in either precision, the exported and the reloaded model (both float32, as the run's evaluation)
    give the reported accuracy."""
    from sr2lora import export_run, load_run

    smoke_run, results = smoke_run(precision=precision)
    assert results["precision"] == precision and results["eval_precision"] == "fp32"
    weights = export_run(smoke_run, tmp_path / "model.safetensors")
    side = json.loads((tmp_path / "model.json").read_text())
    C = len(results["class_names"])
    assert side["num_classes"] == C and side["class_names"] == results["class_names"]
    # exactly the recipe of the brief, plus num_classes in the overlay (without it timm drops the head)
    exported = timm.create_model(
        side["timm_model"], pretrained=True, pretrained_cfg_overlay=dict(file=str(weights), num_classes=C),
        num_classes=C, **side["timm_kwargs"],
    ).eval()
    assert torch.equal(exported.head.weight, load_file(str(weights))["head.weight"])
    assert torch.equal(timm_from_sidecar(weights, side).head.bias, exported.head.bias)

    run = load_run(smoke_run)
    assert not run.model.training and run.class_names == results["class_names"]
    assert run.transform_spec == results["transform"] == side["transform"]
    data = prepare_data(run.config, single_task=False)
    tf = transform_from_spec(side["transform"])
    images = [data.eval_images.load(i) for i in range(len(data.eval_labels))]
    x = torch.stack([tf(im) for im in images])
    assert torch.equal(x, torch.stack([run.transform(im) for im in images]))
    with torch.no_grad():
        a, b = exported(x), run.model(x)
    assert a.shape == (len(images), C)
    assert (a - b).abs().max().item() <= LOGIT_TOL
    acc = 100.0 * float(np.mean(a.argmax(-1).numpy() == data.eval_labels))
    assert acc == pytest.approx(results["final_acc"], abs=1e-6)

    # the model as after each task (heads from the per-task snapshots) gives that task's reported accuracy
    for t in range(results["num_tasks"] - 1):
        rt = load_run(smoke_run, task=t)
        n = results["task_offsets"][t + 1]
        assert len(rt.class_names) == n and rt.class_names == results["class_names"][:n]
        sel = np.nonzero(data.eval_labels < n)[0]
        with torch.no_grad():
            pred = rt.model(x[sel]).argmax(-1).numpy()
        assert 100.0 * float(np.mean(pred == data.eval_labels[sel])) == pytest.approx(
            results["acc_curve"][t], abs=1e-6
        )


def test_predict_cli_reports_bad_files(base_run, tmp_path, capsys):
    from sr2lora import load_run

    results = read_results(base_run)
    run = load_run(base_run)
    data = prepare_data(run.config, single_task=False)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(data.eval_images.images[i * 37]).save(folder / "sub" / f"img{i}.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    notes = folder / "notes.txt"
    notes.write_text("not an image")

    assert run_cli("predict", "--run", base_run, folder, notes, "--top-k", "3", "--quiet") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8  # 6 images + corrupt.png (found in the folder) + notes.txt (named explicitly)
    bad = [ln for ln in lines if ": error: " in ln]
    assert len(bad) == 2 and any("corrupt.png" in ln for ln in bad) and any("notes.txt" in ln for ln in bad)
    good = [ln for ln in lines if ": error: " not in ln]
    assert all(ln.count("%)") == 3 for ln in good)
    assert any(name in good[0] for name in results["class_names"])

    assert run_cli("predict", "--run", base_run, folder, notes, "--json", "--top-k", "2", "--quiet") == 0
    entries = json.loads(capsys.readouterr().out)
    assert isinstance(entries, list) and len(entries) == 8
    by_file = {e["file"]: e for e in entries}
    assert "error" in by_file[str(folder / "corrupt.png")] and "error" in by_file[str(notes)]
    for i in range(6):
        e = by_file[str(folder / "sub" / f"img{i}.png")]
        probs = [p["probability"] for p in e["predictions"]]
        assert len(probs) == 2 and probs[0] >= probs[1] and 0 < sum(probs) <= 1 + 1e-6
        with torch.no_grad():
            logits = run.model(run.transform(Image.open(e["file"]).convert("RGB"))[None])
        top = int(logits.argmax())
        assert e["predictions"][0]["label"] == top and e["predictions"][0]["name"] == results["class_names"][top]

    # --task: only the classes learned up to that task
    assert run_cli("predict", "--run", base_run, folder / "sub", "--json", "--task", "0", "--quiet") == 0
    first = results["class_names"][: results["task_offsets"][1]]
    entries = json.loads(capsys.readouterr().out)
    assert all(p["name"] in first for e in entries for p in e["predictions"])


def test_export_file_sidecar_and_errors(base_run, tmp_path, capsys):
    from sr2lora import load_run

    out = tmp_path / "exp" / "m.safetensors"
    assert run_cli("export", "--run", base_run, "--out", out) == 0
    assert str(out) in capsys.readouterr().out
    state = load_file(str(out))  # safetensors: no pickle involved
    assert "head.weight" in state and "blocks.0.attn.qkv.weight" in state
    assert not any(".A." in k or ".B." in k or ".base." in k for k in state)
    side = json.loads(out.with_suffix(".json").read_text())
    for key in ["timm_model", "timm_kwargs", "input_size", "transform", "class_names", "source_run", "accuracy",
                "versions"]:
        assert key in side, key
    assert set(side["transform"]) >= {"resize", "interpolation", "center_crop", "mean", "std"}
    assert transform_from_spec(side["transform"])(Image.new("RGB", (50, 40))).shape == tuple(side["input_size"])
    assert side["accuracy"]["final_acc"] == read_results(base_run)["final_acc"]

    with pytest.raises(CheckpointError, match="no such run folder"):
        load_run(tmp_path / "missing")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(base_run, unfinished)
    (unfinished / "results.json").unlink()
    with pytest.raises(CheckpointError, match="not finished"):
        load_run(unfinished)
    assert run_cli("predict", "--run", unfinished, out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not finished" in err and "Traceback" not in err
    assert run_cli("export", "--run", tmp_path / "missing", "--out", out) == 2
    assert "no such run folder" in capsys.readouterr().err

    # a backbone rebuilt differently is detected, not silently used
    tampered = tmp_path / "tampered"
    shutil.copytree(base_run, tampered)
    st = json.loads((tampered / "checkpoint" / "state.json").read_text())
    st["backbone_sha256"] = "0" * 64
    (tampered / "checkpoint" / "state.json").write_text(json.dumps(st))
    from sr2lora.runs.checkpoint import write_manifest

    write_manifest(tampered / "checkpoint")  # a consistent checkpoint of another backbone, not a damaged one
    with pytest.raises(CheckpointError, match="backbone_sha256 mismatch"):
        load_run(tampered)
    # without the per-task head snapshots only the final model loads
    (unfinished / "results.json").write_text((base_run / "results.json").read_text())
    (unfinished / "checkpoint" / "heads.safetensors").unlink()
    write_manifest(unfinished / "checkpoint")  # as a run from before the snapshots wrote it
    assert len(load_run(unfinished).class_names) == 20
    with pytest.raises(CheckpointError, match="no head snapshot"):
        load_run(unfinished, task=1)
    with pytest.raises(CheckpointError, match="out of range"):
        load_run(base_run, task=5)
