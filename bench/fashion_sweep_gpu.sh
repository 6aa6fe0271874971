#!/usr/bin/env bash
# The fast-vs-full sampling sweep of docs/evaluation.md on a GPU: 10k images per setting (1000 per
# class) of the Fashion-MNIST model against the 10k test images, FID/KID with NVIDIA's FID
# Inception, class accuracy and classifier IS with the domain classifier.
#   bash bench/fashion_sweep_gpu.sh RUN CLASSIFIER OUT [data overrides...]
set -euo pipefail
run=$1; classifier=$2; out=$3; shift 3
common=(checkpoint="$run" prompts_from=val data=fashion_mnist n=1000 batch_size=1000 truncation_rate=0.86
        "eval.metrics=[fid,kid,class_accuracy,classifier_is]" eval.classifier="$classifier" "$@")
python3 sample.py -m "${common[@]}" guidance_scale=2.0 sampler=ancestral,purity \
    sampler.num_inference_steps=10,25,50,100 hydra.sweep.dir="$out/steps"
python3 sample.py -m "${common[@]}" sampler=purity sampler.num_inference_steps=25 \
    guidance_scale=1.0,1.5,2.0,3.0,5.0 hydra.sweep.dir="$out/guidance"
