#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, in one run on a lent device (about 25 minutes on an H100).
# Run from the repository root with the venv active; output goes to stdout and to $OUT (default runs/gpu_session).
#   bash benchmarks/gpu_session.sh [throughput|loader|all]
set -euo pipefail
OUT=${OUT:-runs/gpu_session}
PEAK=${PEAK_TFLOPS:-989}   # H100 SXM dense bf16
DATA=${DATA:-../shared/data/rsscn7}   # the JPEGs the 50,000-image pool is made from
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.txt") 2>&1
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__)"

throughput() {
  # model only, bf16 autocast: cspt against Hugging Face ViT-MAE, both compiled; ViT-B and ViT-L; decoder heads
  python benchmarks/pretrain_throughput.py --device cuda --model base --batch-size 256 --compile --peak-tflops "$PEAK" --profile
  python benchmarks/pretrain_throughput.py --device cuda --model base --batch-size 256 --compile --peak-tflops "$PEAK" --decoder-heads 8
  python benchmarks/pretrain_throughput.py --device cuda --model large --batch-size 128 --compile --peak-tflops "$PEAK"
}

loader() {
  # end to end against model only, 50,000 JPEGs of mixed sizes made from the shared images, then on shards of them
  common=(--device cuda --config configs/pretrain/cspt_vit_base.yaml --batch-size 256 --precision bf16 --compile
          --num-workers 15 --epochs 1 --make-pool 50000 --pool "$OUT/pool" --data "$DATA")
  python benchmarks/loader_overhead.py "${common[@]}"
  python benchmarks/loader_overhead.py "${common[@]}" --decode-on device
  python benchmarks/loader_overhead.py "${common[@]}" --shards
}

case "${1:-all}" in
  throughput) throughput ;;
  loader) loader ;;
  all) throughput; loader ;;
esac
