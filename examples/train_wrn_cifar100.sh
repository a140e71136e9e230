#!/usr/bin/env bash
# The paper's CIFAR-100 comparison (Appendix C): WRN-28-10, 200 epochs,
# BatchNorm vs GhostNorm (G_M=8) vs SeqNorm (G_C=4, G_M=8), 2 seeds each,
# over every visible GPU. Needs the internet (or a prepared --data-dir) for
# TensorFlow Datasets' cifar100. G_M is per GPU: on one GPU, multiply it by
# 8 to normalize over the paper's ghost batches of 8 samples.
set -euo pipefail
keras-seqnorm compare --preset cifar100-wrn28-10 \
    --norms batch,ghost,sequential --seeds 2 \
    --precision mixed_bfloat16 --jit-compile \
    --run-dir runs/cifar100-wrn28-10 "$@"
