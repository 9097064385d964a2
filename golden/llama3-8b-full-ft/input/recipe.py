import nemo_run as run
from nemo.collections import llm


def full_ft(max_steps: int = 500) -> run.Partial:
    recipe = llm.llama3_8b.finetune_recipe(dir="/results", name="llama3-8b-sft", num_nodes=1, num_gpus_per_node=8, peft_scheme=None)
    recipe.data = run.Config(
        llm.FineTuningDataModule,
        dataset_root="/data/alpaca",
        seq_length=4096,
        micro_batch_size=2,
        global_batch_size=32,
    )
    recipe.trainer.max_steps = max_steps
    recipe.trainer.val_check_interval = 100
    recipe.log.ckpt.every_n_train_steps = 100
    recipe.optim.lr_scheduler.warmup_steps = 20
    recipe.optim.lr_scheduler.min_lr = 1e-7
    return recipe


if __name__ == "__main__":
    run.cli.main(llm.finetune, default_factory=full_ft)
