#!/usr/bin/env bash
# On a machine with a CUDA GPU, one command: the step benchmark for ViT-B/16 at 224 px (batch 128, bf16 and fp32,
# random init, no hub access) and a 2-task run on synthetic CIFAR-100-shaped data (images/s, peak memory); then the
# checks of the evaluation policy on CUDA: the reload-equals-report and precision tests (their smoke runs train
# on the GPU), and the same checkpoints evaluated on the CPU and the GPU. Ends with one line: GPU CHECK: PASS|FAIL.
# About 6-10 minutes on one recent GPU; `make test` never needs it.   Usage: bash benchmarks/gpu.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 SR2LORA_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')" || exit 2
"$PY" -c "import torch; print(torch.cuda.get_device_name(0), '| torch', torch.__version__)"
failed=()

VITB=vit_base_patch16_224.augreg_in21k
for prec in bf16 fp32; do
  echo "== step: $VITB @ 224 px, batch 128, $prec"
  timeout 240 "$PY" benchmarks/step.py --backbone "$VITB" --img-size 224 --batch 128 --precision "$prec" \
    --device cuda --repeats 10 --warmup 3 --json "$OUT/step-vitb16-224-$prec.json" || failed+=("step $prec")
done

echo "== 2-task run, synthetic CIFAR-100-shaped data (100 classes, 40 train / 10 test images each), bf16"
rm -rf "$OUT/synthetic-run"
timeout 300 "$PY" benchmarks/synthetic_run.py --out "$OUT/synthetic-run" \
  model.backbone=$VITB model.pretrained=false "model.timm_kwargs={}" model.rank=10 \
  data.image_size=224 data.num_workers=8 train.batch_size=128 train.eval_batch_size=256 \
  train.precision=bf16 train.epochs=2 ca.epochs=5 train.device=cuda || failed+=("synthetic run")

echo "== same numbers on CUDA: reload / predict / evaluate / analyze / export equal the reported accuracy (every"
echo "   method x classifier x training precision, trained on the GPU), and the bf16 numerics on CUDA"
timeout 420 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_same_numbers.py tests/test_precision.py \
  2>&1 | tee "$OUT/same-numbers.log"
[ "${PIPESTATUS[0]}" = 0 ] || failed+=("same-numbers tests")

echo "== the same checkpoints on the CPU and on CUDA (float32 evaluation on both)"
for prec in bf16 fp32; do
  rm -rf "$OUT/smoke-$prec"
  "$PY" -m sr2lora run --preset smoke --quiet --out "$OUT/smoke-$prec" train.device=cuda train.precision=$prec \
    train.epochs=1 ca.epochs=2 || failed+=("smoke run $prec")
done
timeout 300 "$PY" benchmarks/cross_device.py "$OUT/smoke-bf16" "$OUT/smoke-fp32" "$OUT/synthetic-run" \
  --json "$OUT/cross-device.json" || failed+=("cross-device")
rel=$("$PY" -c "import json; print('%.1e' % json.load(open('$OUT/cross-device.json'))['max_relative'])" 2>/dev/null)
# the README's stated tolerance for CPU vs GPU, float32 evaluation
"$PY" -c "import json, sys; sys.exit(0 if json.load(open('$OUT/cross-device.json'))['max_relative'] <= 1e-4 else 1)" \
  2>/dev/null || failed+=("CPU vs CUDA logits beyond 1e-4 relative (${rel:-not measured})")

echo "results in $OUT"
if [ ${#failed[@]} -eq 0 ]; then
  echo "GPU CHECK: PASS (same numbers on CUDA in both precisions; CPU vs CUDA logits within ${rel} relative)"
else
  echo "GPU CHECK: FAIL ($(IFS=';'; echo "${failed[*]}"))"
  exit 1
fi
