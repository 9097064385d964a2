"""Automodel 0.7's semantics, written once, for ``diff``, ``convert``'s pre-write check and the runtime alike.

* :mod:`.values`   -- how its loader reads a YAML value (``translate_value``, env interpolation, the dtype table);
* :mod:`.schema`   -- its sections, their keys and per-field checks, and the values of absent keys
  (mappings/automodel/schema.yaml, defaults.yaml);
* :mod:`.match`    -- which modules its LoRA adapts (the module-name wildcard matcher);
* :mod:`.schedule` -- its learning-rate / weight-decay schedule as pure functions.

The lowest floor of nemo_migrate: torch-free, imports neither the compiler nor the runtime; every fact cites the
nemo_automodel-0.7.0 source line it was read from.  Automodel 0.8 means editing here (and its data) only.
"""
