#!/usr/bin/env bash
# Paper Tables 13 and 14 on Fashion-MNIST, reduced CPU schedule (same recipe as
# scripts/fashion_mnist_results.sh, but a 2,000-image class-balanced test subset per epoch).
# Usage: scripts/fashion_mnist_ablations.sh OUT TABLE [TABLE ...]   (python: $PYTHON or python)
set -euo pipefail
out=$1; shift
py=${PYTHON:-python}
"$py" -m lolvit ablate "$@" --data fashion-mnist --epochs 2 --img-size 32 --batch-size 64 \
  --opt adamw --warmup-epochs 0.5 --crop-scale 0.8 1.0 --hflip 0.5 --train-subset 5000 --val-subset 2000 \
  --threads 1 --seed 0 --no-progress --no-tensorboard --out "$out"
