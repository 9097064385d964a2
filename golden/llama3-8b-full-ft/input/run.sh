#!/bin/bash
set -e
export NCCL_DEBUG=WARN
torchrun --nproc_per_node=8 recipe.py --factory 'full_ft(max_steps=600)' --yes --yaml config.yaml
