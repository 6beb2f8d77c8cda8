#!/usr/bin/env bash
# latentops against diffusers' DreamBooth-LoRA scripts on one GPU (bench/gpu_finetune.py); report and logs in $OUT.
cd "$(dirname "$0")/.." && exec "${PYTHON:-.venv/bin/python}" bench/gpu_finetune.py --out "${OUT:-gpu-finetune-out}" "$@"
