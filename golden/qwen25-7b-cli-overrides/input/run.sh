#!/bin/bash
torchrun --nproc_per_node=2 recipe.py --factory "qwen25_7b(num_gpus_per_node=2, peft_scheme='lora')" --yes --yaml config.yaml \
    trainer.max_steps=200 optim.config.lr=2e-4 \
    'peft.target_modules=["linear_qkv","linear_proj"]' peft.dim=16 peft.alpha=32
