#!/bin/bash
# NeMo 1.0: Hydra overrides on the command line
torchrun --nproc_per_node=8 /opt/NeMo/examples/nlp/language_modeling/tuning/megatron_gpt_finetuning.py \
    --config-path=conf --config-name=llama2_lora \
    model.peft.lora_tuning.adapter_dim=32 \
    ++model.optim.weight_decay=0.0 \
    trainer.max_steps=1500
