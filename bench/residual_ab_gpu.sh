#!/usr/bin/env bash
# The bf16 residual stream against the float32 one, trained to the end: experiment=quickstart_gpu's
# diffusion stage (3600 steps) once per (residual, seed), one run per GPU, all at once, scored by
# faithfulness on 256 two-object prompts at the end. Run from the repository root on a machine
# with as many GPUs as runs (nvidia-h100-x4 for the default four), with the wheels of
# ../shared/tools/device-wheels in .whl/, an fp16 all-MiniLM-L6-v2 in .cache/minilm-fp16 (see
# bench/quickstart_gpu.sh) and a quickstart_gpu tokenizer in .cache/tok_ab (its stage=tokenizer
# run folder's tokenizer/):
#   bash bench/residual_ab_gpu.sh [seeds...]     # default seeds: 0 1
#   EXTRA="model.num_layers=16 data.batch_size=256" LIMIT=580 bash bench/residual_ab_gpu.sh 0 1
# EXTRA: more Hydra overrides for every run (e.g. a deeper model); LIMIT: seconds per run.
# Prints a table; ${OUT:-bench/out}/residual_ab.json holds every run's validation and loss series.
set -uo pipefail
seeds=${*:-0 1}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
out=${OUT:-bench/out}; mkdir -p "$out" outputs/residual_ab
gpu=0
start=$(date +%s)
for seed in $seeds; do
  for residual in false true; do
    run=outputs/residual_ab/bf16_${residual}_seed${seed}
    CUDA_VISIBLE_DEVICES=$gpu timeout "${LIMIT:-560}" python3 train.py experiment=quickstart_gpu stage=diffusion \
      tokenizer_checkpoint=$PWD/.cache/tok_ab condition.encoder=$PWD/.cache/minilm-fp16 logger=csv seed=$seed \
      diffusion_training.bf16_residual=$residual data.num_workers=10 hydra.run.dir=$run ${EXTRA:-} \
      > "$run.log" 2>&1 &
    gpu=$((gpu + 1))
  done
done
wait
rm -f "$out/residual_ab.json"
printf "| residual | seed | faithfulness, 256 final samples | validation faithfulness (32) @ step | validation VB @ step |\n"
printf "|---|---|---|---|---|\n"
for seed in $seeds; do
  for residual in false true; do
    run=outputs/residual_ab/bf16_${residual}_seed${seed}
    python3 bench/run_summary.py "$run" "$out/residual_ab.json" bf16_residual=$residual seed=$seed
    grep -E "Error|Traceback" "$run.log" | head -3
    [ -f "$run/metrics.json" ] && echo "  wall $(( $(stat -c %Y "$run/metrics.json") - start )) s"
    cp "$run/final_grid.png" "$out/bf16_${residual}_seed${seed}_grid.png" 2>/dev/null
  done
done
