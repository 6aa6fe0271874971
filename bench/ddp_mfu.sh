#!/usr/bin/env bash
# DDP training throughput of the bench/train_mfu.py step (torch.compile'd blocks and loss, as
# experiment=coco / ithq train) on 1, 2 and 4 GPUs of one host, at the COCO and ITHQ sizes, then
# the speed-up table. Several GPUs run DDP with gradient_as_bucket_view (what trainer=ddp sets);
# at the largest count the COCO size also runs DDP's defaults, and the ITHQ size once per SM
# carve-out given (bench/train_mfu.py --sm-carveout). One JSON per run in OUTDIR.
#   bash bench/ddp_mfu.sh [OUTDIR=$OUT or bench] [GPU counts, default "1 2 4"] [carve-outs, e.g. "8 16 24"]
# ITHQ_BATCH (default 24) and ITHQ_ACCUMULATE (default 1) set the ITHQ runs' batch per pass and
# passes per optimizer step: ITHQ_BATCH=20 ITHQ_ACCUMULATE=2 is the recipe of "Speed, stop 15".
set -uo pipefail
out=${1:-${OUT:-bench}}
counts=${2:-1 2 4}
carveouts=${3:-}
export PYTHONPATH=$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
compiled="--compile blocks --compile-loss --steps 10 --warmup 3"
last=${counts##* }
ithq=(--size ithq --batch "${ITHQ_BATCH:-24}" --accumulate "${ITHQ_ACCUMULATE:-1}")
ithq_label=ithq_b${ITHQ_BATCH:-24}x${ITHQ_ACCUMULATE:-1}
run() {  # run N SIZE-LABEL ARGS...
  local n=$1 label=$2; shift 2
  torchrun --standalone --nproc-per-node "$n" bench/ddp_mfu.py $compiled "$@" --out "$out/results_ddp_${label}_$n.json" \
    2>&1 | grep -E "ms/step|Error" | tail -2
}
for n in $counts; do
  view=(); [ "$n" -gt 1 ] && view=(--bucket-view)
  # COCO at its largest single-GPU batch with the default float32 residual stream; ITHQ at
  # ITHQ_BATCH x ITHQ_ACCUMULATE with the bf16 stream (DDP adds 5 GiB to the 1-GPU peak: the
  # float32 stream's 71 GiB at batch 24 would leave almost nothing of the 80 GB; not tried)
  run "$n" coco_b64 --size coco --batch 64 "${view[@]}"
  run "$n" "$ithq_label" "${ithq[@]}" "${view[@]}"
  if [ "$n" = "$last" ] && [ "$n" -gt 1 ]; then
    run "$n" coco_b64_plain_ddp --size coco --batch 64
    # the carve-out reaches cuBLASLt calls only: those runs, and one without it, use cuBLASLt
    [ -n "$carveouts" ] && run "$n" "${ithq_label}_cublaslt" "${ithq[@]}" "${view[@]}" --blas cublaslt
    for sms in $carveouts; do
      run "$n" "${ithq_label}_carveout${sms}" "${ithq[@]}" "${view[@]}" --blas cublaslt \
        --sm-carveout "$sms"
    done
  fi
done
python3 bench/ddp_mfu.py --table "$out"/results_ddp_*.json
