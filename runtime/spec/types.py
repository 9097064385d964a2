"""The normalised spec: what :func:`~.pipeline.resolve` returns and the worker rebuilds (``Spec.from_dict``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelSpec:
    source: str  # "pretrained" (local HF dir with weights) | "config" (random init from a local config) | "proxy"
    name: str | None  # the config's model id / path string (for messages, adapter_config, family detection)
    path: str | None  # local dir (pretrained / config source)
    proxy: str | None
    dtype: str  # "auto" or a torch dtype name
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    use_liger_kernel: bool = True  # 0.7's default: Liger's fused kernels where the package and a GPU are there


@dataclass
class TokenizerSpec:
    path: str | None  # a local dir with tokenizer files; None = train one on the run's text
    add_bos_token: bool = False
    add_eos_token: bool = False


@dataclass
class PeftSpec:
    target_modules: list[str]
    exclude_modules: list[str]
    match_all_linear: bool
    dim: int
    alpha: float
    dropout: float
    dropout_position: str
    lora_A_init: str
    lora_dtype: str | None


@dataclass
class Fp8Spec:
    recipe_name: str | None
    enable_fsdp_float8_all_gather: bool
    precompute_float8_dynamic_scale_for_fsdp: bool
    force_recompute_fp8_weight_in_bwd: bool
    filter_fqns: list[str]
    emulate: bool


@dataclass
class DistSpec:
    strategy: str
    world_size: int
    tp: int
    cp: int
    pp: int
    dp: int
    dp_replicate: int
    sequence_parallel: bool
    param_dtype: str | None
    reduce_dtype: str | None
    output_dtype: str | None
    cast_forward_inputs: bool
    autocast_dtype: str | None
    activation_checkpointing: bool
    defer_fsdp_grad_sync: bool
    reshard_after_forward: bool | None
    enable_compile: bool
    offload: bool
    backend: str
    timeout_minutes: float


@dataclass
class StepSpec:
    global_batch_size: int
    local_batch_size: int
    grad_acc_steps: int
    num_epochs: int | None
    max_steps: int | None
    ckpt_every_steps: int | None
    save_checkpoint_every_epoch: bool
    validate_on_checkpoint: bool
    val_every_steps: int | None
    gc_every_steps: int | None
    preemption_signal: list[str]


@dataclass
class DatasetSpec:
    kind: str  # "column_mapped" | "chat" | "mock"
    params: dict[str, Any]
    shuffle: bool | None
    batch_size: int | None
    drop_last: bool
    pin_memory: bool
    pad_seq_len_divisible: int | None
    packing: dict[str, Any] | None = None  # THD packing: packed_sequence_size, max_packs, pad_to_multiple_of


@dataclass
class OptimSpec:
    target: str  # e.g. torch.optim.AdamW
    kwargs: dict[str, Any]
    param_group_overrides: list[dict[str, Any]]


@dataclass
class CkptSpec:
    enabled: bool
    checkpoint_dir: str
    model_save_format: str
    save_consolidated: str  # "false" | "final" | "every"
    max_recent_checkpoints: int | None
    restore_from: str | None


@dataclass
class CompatSpec:
    lora_tied_a: bool = False
    loss_reduction: str = "automodel"
    master_weights: str = "none"
    no_decay_1d: bool = False
    lr_values: list[float] | None = None  # the LR applied at each optimizer step (replaces the scheduler's)
    init_adapter: str | None = None  # PEFT-format adapter file the LoRA weights start from
    save_init_adapter: bool = False  # write run_dir/initial_adapter.safetensors before the first step
    frozen_base: str = "auto"  # LoRA at N ranks: replicate the frozen base or shard it (parallel.frozen_base_mode)


@dataclass
class CompileSpec:
    enabled: bool = False
    mode: str | None = "default"
    fullgraph: bool = False
    dynamic: bool = False
    backend: str | None = None


@dataclass
class Spec:
    config_path: str
    seed: int
    model: ModelSpec
    tokenizer: TokenizerSpec
    peft: PeftSpec | None
    fp8: Fp8Spec | None
    dist: DistSpec
    step: StepSpec
    loss_ignore_index: int
    loss_fp32_upcast: bool
    optim: OptimSpec
    lr_scheduler: dict[str, Any] | None
    max_grad_norm: float
    train: DatasetSpec
    validation: dict[str, DatasetSpec]
    ckpt: CkptSpec
    compat: CompatSpec
    compile: CompileSpec
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Spec":
        d = dict(d)
        d["model"] = ModelSpec(**d["model"])
        d["tokenizer"] = TokenizerSpec(**d["tokenizer"])
        d["peft"] = PeftSpec(**d["peft"]) if d["peft"] else None
        d["fp8"] = Fp8Spec(**d["fp8"]) if d["fp8"] else None
        d["dist"] = DistSpec(**d["dist"])
        d["step"] = StepSpec(**d["step"])
        d["optim"] = OptimSpec(**d["optim"])
        d["train"] = DatasetSpec(**d["train"])
        d["validation"] = {k: DatasetSpec(**v) for k, v in d["validation"].items()}
        d["ckpt"] = CkptSpec(**d["ckpt"])
        d["compat"] = CompatSpec(**d["compat"])
        d["compile"] = CompileSpec(**d["compile"])
        return cls(**d)
