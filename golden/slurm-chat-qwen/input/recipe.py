"""Chat SFT of Qwen2.5-7B-Instruct with LoRA, submitted to Slurm through NeMo-Run (python recipe.py)."""
import nemo_run as run
from nemo.collections import llm

NODES = 2
GPUS = 8


def chat_lora() -> run.Partial:
    recipe = llm.qwen25_7b.finetune_recipe(
        dir="/lustre/results/qwen-chat", name="qwen_chat_lora", num_nodes=NODES, num_gpus_per_node=GPUS, peft_scheme="lora"
    )
    recipe.data = run.Config(
        llm.ChatDataModule,
        dataset_root="/lustre/data/chat",
        seq_length=4096,
        micro_batch_size=1,
        global_batch_size=32,
    )
    recipe.trainer.max_steps = 500
    recipe.trainer.val_check_interval = 100
    recipe.optim.config.lr = 1e-4
    return recipe


def slurm_executor(nodes: int = NODES, devices: int = GPUS) -> run.SlurmExecutor:
    return run.SlurmExecutor(
        account="llm_team",
        partition="batch",
        time="06:00:00",
        nodes=nodes,
        ntasks_per_node=devices,
        gpus_per_node=devices,
        mem="0",
        exclusive=True,
        container_image="nvcr.io/nvidia/nemo:25.04",
        container_mounts=["/lustre/data:/lustre/data", "/lustre/results:/lustre/results"],
        env_vars={"NCCL_DEBUG": "WARN", "TORCH_NCCL_AVOID_RECORD_STREAMS": "1", "HF_HOME": "/lustre/hf cache"},
        job_name_prefix="team-",
        tunnel=run.SSHTunnel(host="login.cluster.example", user="me", job_dir="/lustre/nemo-run"),
    )


if __name__ == "__main__":
    run.run(chat_lora(), executor=slurm_executor(), name="qwen_chat_lora")
