#!/bin/bash
# one node of four: NODE_RANK and MASTER_ADDR come from the scheduler
torchrun --nnodes=4 --nproc_per_node=8 --node_rank=$NODE_RANK --master_addr=$MASTER_ADDR --master_port=29500 \
    recipe.py --factory long_context_sft --yes
