torchrun --nproc_per_node=1 recipe.py --yes
