#!/usr/bin/env bash
# DDP with the compiled blocks kept whole vs split by Dynamo's DDPOptimizer, at one paper size.
# A block torch.compile'd inside DDP's forward is cut into one graph per 25 MB gradient bucket
# (torch._dynamo.config.optimize_ddp, on by default): ~5 graphs per ITHQ block, with no fusion
# across the cuts. Runs the 1-GPU baseline (no DDP), the wrapper alone on 1 GPU without the
# split, each GPU count without the split, and the largest count with it (PyTorch's default), all
# with gradient_as_bucket_view; then the speed-up table. One JSON per run in OUTDIR.
#   bash bench/ddp_graph_split.sh SIZE [OUTDIR=$OUT or bench] [GPU counts, default "2 4"]
set -uo pipefail
size=$1
out=${2:-${OUT:-bench}}
counts=${3:-2 4}
export PYTHONPATH=$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
case $size in  # each size at the batch and residual stream of bench/ddp_mfu.sh
  coco) step=(--size coco --batch 64) ;;
  ithq) step=(--size ithq --batch 24) ;;
  *) echo "size must be coco or ithq, got '$size'" >&2; exit 2 ;;
esac
last=${counts##* }
run() {  # run N LABEL ARGS...
  local n=$1 label=$2; shift 2
  torchrun --standalone --nproc-per-node "$n" bench/ddp_mfu.py --compile blocks --compile-loss --steps 10 \
    --warmup 3 "${step[@]}" "$@" --out "$out/results_ddp_${size}_${label}_$n.json" 2>&1 | grep -E "ms/step|Error" | tail -2
}
run 1 base
for n in $counts; do
  run "$n" whole --bucket-view --no-graph-split
done
run "$last" split --bucket-view
run 1 wrapped_whole --wrap-one --bucket-view --no-graph-split
python3 bench/ddp_mfu.py --table "$out"/results_ddp_"${size}"_*.json
