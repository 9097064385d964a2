# nemo-migrate: `make example` sets up and converts the bundled example job; `make test` sets up and runs every test.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out/seed
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: setup setup-dev example test wheel-check golden golden-update bench bench-convert bench-limits fuzz clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m compileall -q migrate
	touch $@

$(DEVSTAMP): $(STAMP) requirements/automodel-check.txt requirements/automodel-check-nodeps.txt requirements/runtime.txt requirements/loggers.txt
	$(BIN)/python -m pip install -q -r requirements/automodel-check.txt
	$(BIN)/python -m pip install -q -r requirements/runtime.txt
	$(BIN)/python -m pip install -q -r requirements/loggers.txt
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps -r requirements/automodel-check-nodeps.txt
	touch $@

setup: $(STAMP)

setup-dev: $(DEVSTAMP)

# The main job: convert the user's NeMo 2 job (golden/seed/input = shared/seed-example/nemo2) into Automodel 0.7.
example: setup
	$(BIN)/nemo-migrate convert golden/seed/input -o $(OUT) --force
	@echo "next: read $(OUT)/migration-report.md, then see what will train differently:"
	@echo "  $(BIN)/nemo-migrate diff golden/seed/input $(OUT)"
	@echo "or train it on CPU with the example data (pip install -c requirements/constraints.txt -e '.[runtime]' first, README 'Install'):"
	@echo "  $(BIN)/nemo-migrate run $(OUT)/config-fp16.yaml --proxy-model tiny --max-steps 10 --set distributed.tp_size=1 --set dataset.path_or_dataset_id=examples/data/training.jsonl --set validation_dataset.path_or_dataset_id=examples/data/validation.jsonl --out $(OUT)-run"

# every test, the golden check, then the source oracle (real NeMo 2.7.3 judges every job; nemo-check below)
test: setup-dev nemo-venv
	$(BIN)/python -m pytest -q
	$(BIN)/python -m nemo_migrate.golden check
	$(BIN)/python tools/wheel_check.py
	$(NEMO_VENV)/bin/python tools/nemo_oracle/check.py --project-python $(BIN)/python --no-write
	$(MAKE) --no-print-directory ckpt-check

# what an installed user gets: the built wheel in a fresh venv converts every golden case byte for byte
wheel-check: setup
	$(BIN)/python tools/wheel_check.py

golden: setup
	$(BIN)/python -m nemo_migrate.golden check

golden-update: setup
	$(BIN)/python -m nemo_migrate.golden update

bench-convert: setup
	$(BIN)/python bench/convert_speed.py

# 10 MB YAML / 10,000-line recipe.py: convert or fail cleanly within 10 s (bench/results/limits-*.json)
bench-limits: setup
	$(BIN)/python bench/limits.py

# A long random fuzz run (CI runs a fixed, derandomized 150 inputs per target); the count lands in bench/results/
FUZZ_EXAMPLES ?= 3000
fuzz: setup-dev
	FUZZ_RANDOM=1 FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_RECORD=bench/results/fuzz-$$(date +%F).json \
	  $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py

# GPU only (bench/README.md): the runtime on Automodel's LoRA benchmark workload, recorded in bench/results/.
# BENCH_PY is a python with CUDA torch and the runtime's packages; add Automodel's side-by-side JSON with
# bench/record.py --automodel (../shared/bench/automodel-anchor/ says how to run it).
BENCH_PY  ?= $(BIN)/python
BENCH_OUT ?= bench-out
bench:
	$(BENCH_PY) bench/runtime_speed.py --shape llama8b --variants bf16,bf16-compile,fp8,fp8-compile --out $(BENCH_OUT)/llama8b
	$(BENCH_PY) bench/runtime_speed.py --shape llama1b --variants bf16,fp8-compile --out $(BENCH_OUT)/llama1b
	$(BENCH_PY) bench/record.py --ours $(BENCH_OUT)/llama8b/runtime-speed-llama8b.json $(BENCH_OUT)/llama1b/runtime-speed-llama1b.json \
	  --out bench/results/$$(date +%F)-gpu.json

# The source oracle (issue 14): real NeMo 2.7.3 + NeMo-Run 0.11.1 in their own CPU venv build every golden, real-world
# and recipe job through NeMo-Run's CLI code path; tools/nemo_oracle/check.py compares them with what nemo-migrate
# resolves and emits (every leaf, the LR at every step, micro-batches per step) and writes
# bench/results/nemo-check-<date>.txt and .json.  Exit 2 when a disagreement is not in tools/nemo_oracle/accepted.yaml.
NEMO_VENV  ?= .nemo-venv
NEMO_PY    ?= python3.11
NEMO_STAMP := $(NEMO_VENV)/.installed

.PHONY: nemo-venv nemo-check

# the stamp records how long the build took and whether the venv was new (check.py puts it in its JSON summary)
$(NEMO_STAMP): requirements/nemo-oracle.txt
	@start=$$(date +%s); fresh=0; \
	if [ ! -x $(NEMO_VENV)/bin/python ]; then fresh=1; $(NEMO_PY) -m venv $(NEMO_VENV) || exit 1; fi; \
	$(NEMO_VENV)/bin/python -m pip install -q -r requirements/nemo-oracle.txt || exit 1; \
	echo "fresh=$$fresh seconds=$$(( $$(date +%s) - start ))" > $@; cat $@

nemo-venv: $(NEMO_STAMP)

nemo-check: setup-dev nemo-venv
	$(NEMO_VENV)/bin/python tools/nemo_oracle/check.py --project-python $(BIN)/python $(NEMO_CHECK_ARGS)
	$(MAKE) --no-print-directory ckpt-check

# convert-checkpoint against checkpoints and exports real NeMo 2.7.3 writes now (into a temporary folder: NeMo's
# checkpoint metadata is not byte-deterministic, so the checked-in fixtures are not rewritten)
ckpt-check: setup-dev nemo-venv
	@d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; \
	NEMO2_CKPT_FIXTURES="$$d" $(NEMO_VENV)/bin/python tools/nemo_oracle/make_ckpt_fixtures.py > "$$d/generate.log" 2>&1 || { tail -40 "$$d/generate.log"; exit 1; }; \
	NEMO2_CKPT_FIXTURES="$$d" $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_checkpoint.py

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache

# convert-checkpoint's reference (issue 19): real NeMo 2.7.3 in .nemo-venv imports tiny random HF models (llm.import_ckpt),
# writes LoRA adapter checkpoints and exports both back with llm.export_ckpt (hf / hf-peft) into tests/fixtures/nemo2_ckpt/,
# which tests/test_checkpoint.py compares convert-checkpoint with.  CKPT_FIXTURE_ARGS: case names, --keep-going.
.PHONY: ckpt-fixtures ckpt-check
ckpt-fixtures: nemo-venv
	$(NEMO_VENV)/bin/python tools/nemo_oracle/make_ckpt_fixtures.py $(CKPT_FIXTURE_ARGS)
