import nemo_run as run
from lightning.pytorch.loggers import WandbLogger
from nemo.collections import llm
from nemo.lightning.pytorch.callbacks import GarbageCollectionCallback


def squad_dora() -> run.Partial:
    recipe = llm.llama32_1b.finetune_recipe(
        name="squad-dora", num_gpus_per_node=1, peft_scheme="dora", packed_sequence=True
    )
    recipe.trainer.max_steps = 250
    recipe.trainer.callbacks.append(run.Config(GarbageCollectionCallback, gc_interval_train=100, gc_interval_val=100))
    recipe.log.wandb = run.Config(WandbLogger, project="nemo-migration", name="squad-dora")
    recipe.log.tensorboard = None
    return recipe


if __name__ == "__main__":
    run.cli.main(llm.finetune, default_factory=squad_dora)
