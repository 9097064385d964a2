"""nemo-migrate: a compiler from NeMo 2 fine-tuning jobs to NeMo Automodel 0.7 jobs."""

__version__ = "0.1.0"
