#!/usr/bin/env bash
# Diffusion-stage training throughput on 1 GPU vs `trainer=ddp` on N GPUs, same machine, same
# per-GPU batch (quickstart_gpu shapes). Needs .whl/ and .cache/minilm-fp16 (see quickstart_gpu.sh).
#   bash bench/ddp_throughput.sh [N=2] [STEPS=400]
set -uo pipefail
N=${1:-2}; STEPS=${2:-400}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
common="experiment=quickstart_gpu condition.encoder=$PWD/.cache/minilm-fp16 logger=csv diffusion_training.compile=false
  diffusion_training.max_steps=$STEPS diffusion_training.val_every_n_steps=100000 final_num_images=8
  validation.num_images=8 tokenizer_training.max_steps=20 tokenizer_training.val_every_n_steps=20"
for devices in 1 $N; do
  if [ "$devices" = 1 ]; then trainer="trainer=gpu"; else trainer="trainer=ddp trainer.devices=$devices"; fi
  python3 train.py $common $trainer hydra.run.dir=outputs/ddp_bench_$devices 2>&1 | grep -E "throughput|Error|error" | tail -3
  cat outputs/ddp_bench_$devices/throughput.json
  [ -n "${OUT:-}" ] && cp outputs/ddp_bench_$devices/throughput.json "$OUT/throughput_$devices.json"
done
