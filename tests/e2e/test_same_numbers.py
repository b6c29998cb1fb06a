"""The accuracy a run reports is exactly what its reloaded, predicting, analysed and exported model gives.

Training computes in ``train.precision``; everything that reads the trained model computes in float32
(``sr2lora.core.hardware.EVAL_PRECISION``). So for every registered method, every classifier kind and both training
precisions (forced: never what ``auto`` picks), on the smoke preset: ``load_run`` as after every task, ``predict``
on the evaluation images written as PNG files, ``evaluate_run`` (the offline evaluation of the checkpoint),
``analyze`` (its margins are the heads' correctness) and an exported model loaded in plain timm give the numbers
in results.json, to the image.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import PRECISIONS
from sr2lora import export_run, load_run
from sr2lora.analysis.drift import analyze_run
from sr2lora.analysis.restore import evaluate_run
from sr2lora.config import load_config
from sr2lora.core.hardware import float32_evaluation
from sr2lora.data.run_data import prepare_data
from sr2lora.inference.predict import predict
from sr2lora.methods import get_method_class, method_names

KINDS = ("ca", "ncm", "ridge")


@pytest.fixture(scope="session")
def eval_images(tmp_path_factory):
    """The smoke preset's evaluation images as PNG files (lossless: the same pixels) and their run labels."""
    data = prepare_data(load_config("smoke"), single_task=False)
    folder = tmp_path_factory.mktemp("smoke-eval")
    files = []
    for i in range(len(data.eval_labels)):
        files.append(folder / f"{i:04d}.png")
        Image.fromarray(data.eval_images.images[data.eval_index[i]]).save(files[-1])
    return files, data.eval_labels


def accuracy(pred, labels) -> float:
    """The accuracy as the run computes it (``sr2lora.train.metrics.task_accuracies``: the mean over the images)."""
    return 100.0 * float(np.mean(np.asarray(pred) == np.asarray(labels)))


def exported_logits(weights, x: torch.Tensor) -> torch.Tensor:
    """The logits of an exported model, built with timm alone from its sidecar (plus the ridge weights file)."""
    side = json.loads(weights.with_suffix(".json").read_text())
    load = dict(side["load"])
    load["pretrained_cfg_overlay"] = {**load["pretrained_cfg_overlay"], "file": str(weights)}
    model = timm.create_model(side["timm_model"], **load, **side["timm_kwargs"]).eval().to(x.device)
    with torch.no_grad(), float32_evaluation(x.device):  # on CUDA: no TF32, as sr2lora evaluates
        out = model(x)
        if "file" in side["classifier"]:  # the ridge head: logits = relu(model(x)) @ weight.T
            beta = load_file(str(weights.parent / side["classifier"]["file"]))["weight"].to(x.device)
            out = torch.relu(out) @ beta.T
    return out


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", method_names())
def test_every_way_of_using_a_run_gives_its_reported_accuracy(smoke_run, eval_images, tmp_path, method, kind,
                                                              precision):
    cls = get_method_class(method)
    # the method's own classifier is its run with no classifier.kind: shared with the tests that run each method
    chosen = [] if kind == cls.default_classifier else [f"classifier.kind={kind}"]
    out, res = smoke_run(f"method.name={method}", *chosen, precision=precision)
    files, labels = eval_images
    assert res["precision"] == precision and res["eval_precision"] == "fp32"
    assert res["classifier"]["kind"] == kind
    T = res["num_tasks"]
    device = res["device_type"]  # the same machine: the device the run evaluated on (CUDA in benchmarks/gpu.sh)

    # load_run: the final model, and the model as after every earlier task it can rebuild
    final = load_run(out, device=device)
    x = torch.stack([final.transform(Image.open(f).convert("RGB")) for f in files]).to(device)
    for t in range(T) if not cls.rewrites_past else [T - 1]:
        run = final if t == T - 1 else load_run(out, task=t, device=device)
        seen = np.nonzero(labels < res["task_offsets"][t + 1])[0]
        with torch.no_grad():
            pred = run.model(x[seen]).argmax(-1).cpu().numpy()
        assert accuracy(pred, labels[seen]) == pytest.approx(res["acc_curve"][t], abs=1e-9), f"task {t}"
    assert accuracy(pred, labels) == pytest.approx(res["final_acc"], abs=1e-9)

    # predict: the files, top-1
    entries = predict(final, files, top_k=1, progress=False)  # the loaded run, on its device
    assert accuracy([e["predictions"][0]["label"] for e in entries], labels) == pytest.approx(res["final_acc"],
                                                                                              abs=1e-9)

    # evaluate_run: the checkpoint evaluated offline, per task
    e = evaluate_run(str(out))
    assert e["row"] == res["accuracy_matrix"][-1] and e["overall"] == pytest.approx(res["final_acc"], abs=1e-9)

    # analyze: with every evaluation image in the sample, a positive margin is a correct prediction of the heads
    if kind == "ca" and not cls.rewrites_past:
        doc = analyze_run(out, samples_per_task=len(labels), seed=0)
        for task in doc["tasks"]:
            j, n = task["task"], len(task["sample"]["indices"])
            assert n == res["task_test_counts"][j]  # the whole task
            for r in task["after"]:  # margin_positive is a float32 mean: compare the counts of correct images
                assert round(r["margin_positive"] * n) == round(res["accuracy_matrix"][r["t"]][j] * n / 100), (j, r)

    # export, then plain timm
    weights = export_run(out, tmp_path / "model.safetensors")
    assert accuracy(exported_logits(weights, x).argmax(-1).cpu().numpy(), labels) == pytest.approx(
        res["final_acc"], abs=1e-9)


# ---------------------------------------------------------------- the tolerance across machines

# The same checkpoint, float32, through another kernel or thread count (what another CPU kind changes): logits
# within this fraction of their largest magnitude (measured 2e-7 on the micro ViT; the README states 1e-5).
FP32_REL_TOL = 1e-5
# The same checkpoint evaluated under bf16 autocast instead (what evaluating in the training precision would do):
# within this fraction (measured 3.5e-3 on the micro ViT, where it changed 2 of 240 predictions).
BF16_REL_TOL = 2e-2


def _flips_only_near_ties(ref: torch.Tensor, other: torch.Tensor) -> None:
    """A prediction may change only where the reference's top-2 margin is within twice the largest deviation."""
    dev = float((other - ref).abs().max())
    top2 = ref.topk(2, dim=-1).values
    flipped = other.argmax(-1) != ref.argmax(-1)
    assert bool(((top2[:, 0] - top2[:, 1])[flipped] <= 2 * dev).all())


def test_the_same_checkpoint_on_another_cpu_kind_and_in_bf16(smoke_run, eval_images, monkeypatch):
    """Evaluation is float32, so what moves it between machines is the kernels and the reduction order: here
    the fused oneDNN linear (used on AVX-512 CPUs) against ``F.linear`` (AVX2 CPUs) and 1 against 2 threads stay
    within FP32_REL_TOL and keep the accuracy; bf16 autocast moves the logits far more. A caller's own autocast
    does not reach the reloaded model: it computes in float32 anyway."""
    from sr2lora.models import fastpath

    out, res = smoke_run("method.name=sr2lora")
    files, labels = eval_images
    run = load_run(out)
    x = torch.stack([run.transform(Image.open(f).convert("RGB")) for f in files])

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return run.model(x)

    monkeypatch.setattr(fastpath, "USE_ONEDNN", fastpath.onednn_available())
    ref = logits()
    scale = float(ref.abs().max())
    if res["device_type"] == "cpu":  # (on a GPU machine the run evaluated on CUDA: another device)
        assert accuracy(ref.argmax(-1), labels) == pytest.approx(res["final_acc"], abs=1e-9)
    monkeypatch.setattr(fastpath, "USE_ONEDNN", False)
    threads = torch.get_num_threads()
    for n in (1, 2):
        torch.set_num_threads(n)
        try:
            other = logits()
        finally:
            torch.set_num_threads(threads)
        assert float((other - ref).abs().max()) <= FP32_REL_TOL * scale, n
        _flips_only_near_ties(ref, other)

    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast: the model still computes in float32
        guarded = logits()
        with torch.no_grad():  # the same network with its float32 guard bypassed: really bf16
            bf16 = run.model.cil(x, tasks=run.model.lora_tasks, heads=len(run.model.cil.heads)).logits.float()
    assert guarded.dtype == torch.float32 and float((guarded - ref).abs().max()) <= FP32_REL_TOL * scale
    dev = float((bf16 - ref).abs().max())
    assert FP32_REL_TOL * scale < dev <= BF16_REL_TOL * scale  # it did run in bf16, and moved this much at most
    _flips_only_near_ties(ref, bf16)
