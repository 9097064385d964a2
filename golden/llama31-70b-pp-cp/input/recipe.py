import nemo_run as run
from nemo.collections import llm


def long_context_sft() -> run.Partial:
    recipe = llm.llama31_70b.finetune_recipe(
        dir="/lustre/exp", name="l70b-long", num_nodes=4, num_gpus_per_node=8, peft_scheme="none", seq_length=8192
    )
    recipe.data = run.Config(llm.FineTuningDataModule, dataset_root="/lustre/data/long", seq_length=8192,
                             micro_batch_size=1, global_batch_size=32)
    strategy = recipe.trainer.strategy
    strategy.tensor_model_parallel_size = 4
    strategy.pipeline_model_parallel_size = 4
    strategy.virtual_pipeline_model_parallel_size = 2
    strategy.context_parallel_size = 2
    strategy.sequence_parallel = True
    recipe.model.config.calculate_per_token_loss = True
    recipe.model.config.recompute_granularity = "full"
    recipe.model.config.recompute_method = "uniform"
    recipe.model.config.recompute_num_layers = 1
    recipe.trainer.max_steps = 2000
    return recipe
