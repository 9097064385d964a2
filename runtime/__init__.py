"""nemo-migrate's bundled training runtime: runs an Automodel 0.7 LLM fine-tune YAML (FSDP2, TP, LoRA, FP8).

Layering: ``runtime`` never imports ``migrate``. Entry point: ``nemo_migrate.runtime.api.run_main(RunOptions(...))``.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
