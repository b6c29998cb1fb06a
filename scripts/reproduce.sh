#!/usr/bin/env bash
# Run a slice of the paper's grid and collect the results into one report.
#
#   scripts/reproduce.sh [-d "cifar100 imagenet-r"] [-t "10 20"] [-s "0 1993 1996"] [-m "sr2lora seqlora frozen"]
#                        [-o runs/grid] [-- extra key=value overrides, e.g. data.root=/data/imagenet-r]
#
# Each cell runs `sr2lora run --preset <dataset>-<T>t seed=<s> method.name=<m>` into
# <out>/<dataset>-<T>t/<m>/seed<s>; finished cells are skipped and interrupted ones resumed, so the script can
# be rerun after a crash. Needs the datasets (see README "Datasets") and the ViT-B/16 weights (hub access or
# model.pretrained=/path/to/weights). Use one GPU per invocation, or torchrun via SR2LORA_LAUNCH, e.g.
#   SR2LORA_LAUNCH="torchrun --nproc_per_node=8 -m sr2lora" scripts/reproduce.sh -d imagenet-r -t 10
set -euo pipefail
datasets="cifar100 imagenet-r imagenet-a cub200"
tasks="5 10 20 50"
seeds="0 1993 1996"
methods="sr2lora seqlora frozen"
out="runs/grid"
while getopts "d:t:s:m:o:h" opt; do
  case "$opt" in
    d) datasets="$OPTARG" ;;
    t) tasks="$OPTARG" ;;
    s) seeds="$OPTARG" ;;
    m) methods="$OPTARG" ;;
    o) out="$OPTARG" ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
here="$(cd "$(dirname "$0")/.." && pwd)"
launch="${SR2LORA_LAUNCH:-$here/.venv/bin/sr2lora}"
for ds in $datasets; do
  for t in $tasks; do
    for m in $methods; do
      for s in $seeds; do
        dir="$out/$ds-${t}t/$m/seed$s"
        if [ -f "$dir/results.json" ]; then
          echo "done already: $dir"
        elif [ -f "$dir/config.yaml" ]; then
          echo "resuming: $dir"
          $launch run --resume "$dir" "$@"
        else
          echo "running: $dir"
          mkdir -p "$(dirname "$dir")"
          $launch run --preset "$ds-${t}t" --out "$dir" "seed=$s" "method.name=$m" "$@"
        fi
      done
    done
  done
done
"$here/.venv/bin/sr2lora" report "$out" --out "$out/report"
echo "report: $out/report/report.md"
