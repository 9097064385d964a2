import nemo_run as run
from nemo.collections import llm
from nemo.collections.llm.recipes.precision.mixed_precision import bf16_with_fp8_current_scaling_mixed


def phi3_attention_lora() -> run.Partial:
    recipe = llm.phi3_mini_4k_instruct.finetune_recipe(dir="/out", name="phi3", num_nodes=1, num_gpus_per_node=1)
    recipe.data = run.Config(
        llm.FineTuningDataModule,
        dataset_root="/data/support",
        seq_length=4096,
        global_batch_size=16,
        micro_batch_size=4,
        dataset_kwargs=run.Config(dict, prompt_template="{input} {output}", add_bos=True),
    )
    recipe.peft.target_modules = ["linear_qkv", "linear_proj"]
    recipe.peft.dim = 16
    recipe.peft.alpha = 16
    recipe.trainer.plugins = bf16_with_fp8_current_scaling_mixed()
    recipe.trainer.max_steps = 300
    return recipe


if __name__ == "__main__":
    run.cli.main(llm.finetune, default_factory=phi3_attention_lora)
