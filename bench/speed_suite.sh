#!/usr/bin/env bash
# Every issue-5 speed measurement on one GPU, in one go (each part bounded by a time limit so one
# slow compile does not eat the rest). JSON results go to ${OUT:-bench/out}; tables to stdout.
#   bash bench/speed_suite.sh [sampling|training|all|profile]
# Needs diffusers (../shared/tools/device-wheels puts its wheel in .whl/).
set -uo pipefail
what=${1:-all}
out=${OUT:-bench/out}; mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # vqdiffusion from this checkout, installed or not
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
nvidia-smi --query-gpu=name --format=csv,noheader
quiet() { grep -v -i "warn\|float32\|mask_class\|deprecat"; }
if [ "$what" = profile ]; then  # where the time goes (bench/profile_step.py), not part of "all"
  timeout 230 python3 bench/profile_step.py --out "$out/profile_train_ithq_b16.json" \
      train --size ithq --batch 16 --compile blocks --compile-loss 2>&1 | quiet | tail -25
  for spec in "bf16-compiled 32" "fp8-compiled 32" "bf16-graphs 1"; do
    set -- $spec
    timeout 112 python3 bench/profile_step.py --out "$out/profile_sample_$1_b$2.json" \
        sample --variant "$1" --batch "$2" 2>&1 | quiet | tail -25
  done
  exit 0
fi
if [ "$what" != training ]; then
  timeout 420 python3 bench/sampling.py --batch 32 --steps 5 15 --reps 2 \
      --variants bf16-compiled fp8-compiled fp8-tuned --out "$out/sampling_b32.json" 2>&1 | quiet | tail -6
  timeout 300 python3 bench/sampling.py --batch 1 --steps 10 30 --reps 3 \
      --variants bf16-graphs fp8-graphs --out "$out/sampling_b1.json" 2>&1 | quiet | tail -6
  timeout 200 python3 bench/step_split.py 2>&1 | quiet | tail -8
fi
if [ "$what" != sampling ]; then
  # transformer blocks compiled one by one (one graph for all; the whole-model compile of the ITHQ
  # size outlasted 150 s) and the loss math; the bf16 residual stream (the default) then float32;
  # the largest batches
  t="--compile blocks --compile-loss"
  timeout 150 python3 bench/train_mfu.py --size ithq --batch 16 24 --checkpointing off $t \
      --out "$out/train_ithq.json" 2>&1 | quiet | tail -4
  timeout 150 python3 bench/train_mfu.py --size ithq --batch 16 24 --checkpointing off $t --residual float32 \
      --out "$out/train_ithq_float32_residual.json" 2>&1 | quiet | tail -4
  timeout 100 python3 bench/train_mfu.py --size ithq --batch 24 --accumulate 2 $t \
      --out "$out/train_ithq_accumulate.json" 2>&1 | quiet | tail -3
  # what gradient checkpointing costs at the same batch, and the batch it makes fit
  timeout 150 python3 bench/train_mfu.py --size ithq --batch 24 64 --checkpointing on $t \
      --out "$out/train_ithq_ckpt.json" 2>&1 | quiet | tail -4
  timeout 150 python3 bench/train_mfu.py --size coco --batch 48 64 --checkpointing off $t \
      --out "$out/train_coco.json" 2>&1 | quiet | tail -4
fi
