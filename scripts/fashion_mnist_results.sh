#!/usr/bin/env bash
# Reduced CPU schedule for the Fashion-MNIST table in docs/results/classification.md:
# 5,000-image class-balanced train subset (seed 0), full 10,000-image test set, 32 px, 2 epochs,
# AdamW lr 1e-3 (paper app. E), batch 64, identical recipe for all six models, 1 thread per run.
# Usage: scripts/fashion_mnist_results.sh OUT MODEL [MODEL ...]   (python: $PYTHON or python)
set -euo pipefail
out=$1; shift
py=${PYTHON:-python}
for m in "$@"; do
  "$py" -m lolvit train --model "$m" --data fashion-mnist --epochs 2 --img-size 32 --batch-size 64 \
    --opt adamw --warmup-epochs 0.5 --crop-scale 0.8 1.0 --hflip 0.5 --train-subset 5000 \
    --threads 1 --seed 0 --no-progress --out "$out/$m" --exist-ok
done
