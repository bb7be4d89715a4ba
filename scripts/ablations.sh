#!/usr/bin/env bash
# Reproduce the README's ablation tables (CPU, synthetic data). Run from the repository root:
#   bash scripts/ablations.sh            # trains 5 runs of 400 steps each, then evaluates them
# Data (once):
#   mofme synth allweather --out data/aw --train 1600 --test 24 --size 128x128 --seed 0
#   mofme synth rvsd --out data/synth_rvsd --videos 40 --test-videos 8 --frames 12 --size 128x160 --seed 0
set -euo pipefail
STEPS=${STEPS:-400}
common=(--set train.steps="$STEPS" --set train.val_every="$STEPS" --no-progress)

# Video: reference-frame model vs single-frame model, same data, same budget.
mofme train configs/bundled_video.yaml "${common[@]}" --set model.in_channels=6 --set out=runs/abl_video_ref
mofme train configs/bundled_video.yaml "${common[@]}" --set model.in_channels=3 --set out=runs/abl_video_single
# Image: linear vs uncertainty-aware router; top-k training vs top-p training.
mofme train configs/bundled_image.yaml "${common[@]}" --set out=runs/abl_image_linear
mofme train configs/bundled_image.yaml "${common[@]}" --set model.router=uar --set out=runs/abl_image_uar
mofme train configs/bundled_image.yaml "${common[@]}" --set model.routing=topp:0.6 --set out=runs/abl_image_topp

mkdir -p results
for arm in ref single; do
  mofme test runs/abl_video_$arm/model_last.safetensors --data data/synth_rvsd --no-progress \
    --input-baseline --out results/abl_video_$arm.json | tee results/abl_video_$arm.md
done
for arm in linear uar topp; do
  mofme test runs/abl_image_$arm/model_last.safetensors --data data/aw --no-progress \
    --routing topk:2,topp:0.6 --flops-size none --out results/abl_image_$arm.json | tee results/abl_image_$arm.md
done
