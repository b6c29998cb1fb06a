#!/usr/bin/env bash
# On a machine with a CUDA GPU: the step benchmark for ViT-B/16 at 224 px, batch 128, bf16 and fp32 (random
# init, no hub access), then a 2-task run on synthetic CIFAR-100-shaped data; images/s and peak memory.
# About 2-4 minutes on one recent GPU.   Usage: bash benchmarks/gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
"$PY" -c "import torch; print(torch.cuda.get_device_name(0), '| torch', torch.__version__)"

VITB=vit_base_patch16_224.augreg_in21k
for prec in bf16 fp32; do
  echo "== step: $VITB @ 224 px, batch 128, $prec"
  timeout 240 "$PY" benchmarks/step.py --backbone "$VITB" --img-size 224 --batch 128 --precision "$prec" \
    --device cuda --repeats 10 --warmup 3 --json "$OUT/step-vitb16-224-$prec.json"
done

echo "== 2-task run, synthetic CIFAR-100-shaped data (100 classes, 40 train / 10 test images each), bf16"
rm -rf "$OUT/synthetic-run"
timeout 300 "$PY" benchmarks/synthetic_run.py --out "$OUT/synthetic-run" \
  model.backbone=$VITB model.pretrained=false "model.timm_kwargs={}" model.rank=10 \
  data.image_size=224 data.num_workers=8 train.batch_size=128 train.eval_batch_size=256 \
  train.precision=bf16 train.epochs=2 ca.epochs=5 train.device=cuda
echo "results in $OUT"
