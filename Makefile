# DinoTwins Explorer. `make setup` is idempotent: it builds .venv once and re-installs only when
# requirements.txt or pyproject.toml changes. The package itself is installed editable (the dinotwins-* commands).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup data test test-fast demo demo-models bench bench-levers bench-cpu bench-cpu-avx2 bench-cpu-processes bench-gpu bench-memory bench-app clean

setup: $(STAMP) data

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Debian's packages: Fashion-MNIST, the scenes data's objects (tuxpaint stamps) and background photographs, and
# Chromium for the browser tests; installed when apt is there and we are root, else skipped.
DEBIAN_PACKAGES := dataset-fashion-mnist tuxpaint-stamps-default mate-backgrounds plasma-workspace-wallpapers chromium
data:
	@if [ -d /usr/share/datasets/fashion-mnist ] && [ -d /usr/share/tuxpaint/stamps ] && \
	  [ -d /usr/share/backgrounds/mate/nature ] && [ -d /usr/share/wallpapers/Path ] && command -v chromium >/dev/null; then \
	  echo "system packages present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q $(DEBIAN_PACKAGES) >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q $(DEBIAN_PACKAGES) >/dev/null)) \
	  && echo "installed $(DEBIAN_PACKAGES)"; \
	else echo "skipping Debian packages (no apt or not root)"; fi

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/python -m app

# Train the three demo models of one set with one recipe and package them under assets/models/<set>/ (weights,
# metrics, eval.json). The default is the scenes set (hours on a 2-core CPU, see README, Results):
# the scenes preset (64 px) on `scenes-paired` with SCENES_RECIPE's settings (a 0.02 DINO teacher, no iBOT, a
# 3 x 512 Barlow Twins projector, local crops of 0.05-0.6 of the image, each read only by the methods that have it;
# 20 epochs), DINO's exports kept for the Over training tab. DEMO_DATA=fashion-mnist DEMO_PRESET=cpu
# DEMO_EXTRA="--epochs 15" is the Fashion-MNIST CPU recipe.
# DEMO_TRAIN_DATA is the spec trained on, DEMO_DATA the one the models are evaluated and filed under: the scenes
# models train on generated backgrounds, two per image, and are scored on scenes' photographs (README, Results).
DEMO_DATA ?= scenes
DEMO_TRAIN_DATA ?= $(if $(filter scenes,$(DEMO_DATA)),scenes-paired,$(DEMO_DATA))
DEMO_PRESET ?= scenes
SCENES_RECIPE := --set dino.teacher_temp=0.02 --set dino.warmup_teacher_temp=0.02 --set ibot.weight=0 \
  --set barlow.proj_dims=[512,512,512] --export-every 750 --epochs 20 --set augment.local_scale=[0.05,0.6]
DEMO_EXTRA ?= $(if $(filter scenes,$(DEMO_DATA)),$(SCENES_RECIPE))
DEMO_EXPORTS ?= $(if $(filter scenes,$(DEMO_DATA)),1500 3000 4500)
METHODS = $(shell $(BIN)/python -c "from dinotwins.objectives import METHODS; print(*METHODS)")
demo-models: setup
	for m in $(METHODS); do \
	  exports=""; if [ $$m = dino ] && [ -n "$(DEMO_EXPORTS)" ]; then exports="--exports $(DEMO_EXPORTS)"; fi; \
	  $(BIN)/python train.py --method $$m --preset $(DEMO_PRESET) --data $(DEMO_TRAIN_DATA) --out runs/demo-$(DEMO_DATA)/$$m $(DEMO_EXTRA) && \
	  $(BIN)/python -m dinotwins.ship runs/demo-$(DEMO_DATA)/$$m assets/models/$(DEMO_DATA)/$$m --data $(DEMO_DATA) $$exports \
	    --command "python train.py --method $$m --preset $(DEMO_PRESET) --data $(DEMO_TRAIN_DATA) --out runs/demo-$(DEMO_DATA)/$$m $(DEMO_EXTRA)" \
	    || exit 1; done

bench: setup
	$(BIN)/python -m dinotwins.bench

# The README's Performance table: every lever on the bench preset (the issue's CPU config), then the data pipeline.
bench-levers: setup
	for flags in "--method dino --set precision=fp32 --set attention=fused" \
	  "--method dino --set precision=fp32 --set attention=explicit" \
	  "--method dino --set precision=bf16 --set attention=fused" "--method dino --set backward_per_resolution=false" \
	  "--method dino" "--method dino --set compile=true" "--method barlow" "--method hybrid"; do \
	  $(BIN)/python -m dinotwins.bench --json $$flags | tail -1; done
	$(BIN)/python -m dinotwins.bench --data-pipeline --json | tail -1

# Max RSS of 4-step demo-preset runs on Fashion-MNIST (the issue's memory target), each backward mode.
# The README's per-CPU table: our step beside the official DINO step (a clone at OFFICIAL) in the same run, on the
# bench preset and the scenes preset (also at widths 384 and 768), plus the packed-crops and per-method rows.
OFFICIAL ?= ../dino
WIDER = "--set model.embed_dim=384 --set model.num_heads=6" "--set model.embed_dim=768 --set model.num_heads=12"
bench-cpu: setup
	$(BIN)/python -m dinotwins.bench --official $(OFFICIAL) --json | tail -1
	$(BIN)/python -m dinotwins.bench --official $(OFFICIAL) --set precision=fp32 --json | tail -1
	$(BIN)/python -m dinotwins.bench --set packed_crops=true --json | tail -1
	$(BIN)/python -m dinotwins.bench --preset scenes --official $(OFFICIAL) --json | tail -1
	for flags in $(WIDER); do \
	  $(BIN)/python -m dinotwins.bench --preset scenes --official $(OFFICIAL) --json $$flags | tail -1; done
	for flags in "--set packed_crops=false" "--set packed_crops=false --set backward_per_resolution=false" "--method barlow" "--method hybrid"; do \
	  $(BIN)/python -m dinotwins.bench --preset scenes --json $$flags | tail -1; done

# The same comparison as on an AVX2-only CPU: ATen, oneDNN and MKL capped to AVX2, so bf16 has no native path and
# precision `auto` picks fp32 (README, Performance). On a CPU without AVX512 the caps change nothing.
AVX2_ONLY = ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
bench-cpu-avx2: setup
	$(AVX2_ONLY) $(BIN)/python -m dinotwins.bench --official $(OFFICIAL) --json | tail -1
	$(AVX2_ONLY) $(BIN)/python -m dinotwins.bench --preset scenes --official $(OFFICIAL) --json | tail -1
	$(AVX2_ONLY) $(BIN)/python -m dinotwins.bench --preset scenes --official $(OFFICIAL) --json \
	  --set model.embed_dim=384 --set model.num_heads=6 | tail -1

# One process per core against one process with a thread per core, both steps under the same launch (torchrun with
# gloo; the per-process batch halves so the global batch stays 64).
TWO_PROCS = OMP_NUM_THREADS=1 $(BIN)/torchrun --standalone --nproc_per_node 2 -m dinotwins.bench --threads 1 \
  --set batch_size=32
bench-cpu-processes: setup
	for preset in bench scenes; do \
	  $(BIN)/python -m dinotwins.bench --preset $$preset --official $(OFFICIAL) --json | tail -1; \
	  $(TWO_PROCS) --preset $$preset --official $(OFFICIAL) --json | tail -1; done

# The README's GPU table: the official one-GPU defaults at batch 64 and 256, the CPU tables' config, compile, and
# the step replayed as CUDA graphs at batch 256. The bench needs torch and timm only: on a GPU machine without the
# venv, `make bench-gpu PYTHON=python3 OFFICIAL=PATH` runs it with that Python (nothing installed).
PYTHON ?= $(BIN)/python
GPU_BENCH = $(PYTHON) -m dinotwins.bench --preset bench-gpu --set device=cuda
bench-gpu: $(if $(filter $(BIN)/python,$(PYTHON)),setup)
	$(GPU_BENCH) --official $(OFFICIAL) --json | tail -1
	$(GPU_BENCH) --set batch_size=256 --official $(OFFICIAL) --json | tail -1
	$(PYTHON) -m dinotwins.bench --set device=cuda --official $(OFFICIAL) --json | tail -1
	$(GPU_BENCH) --set compile=true --json | tail -1
	$(GPU_BENCH) --set batch_size=256 --set compile=true --set compile_mode=reduce-overhead --official $(OFFICIAL) \
	  --json | tail -1

bench-memory: setup
	for method in dino hybrid; do for per_res in true false; do \
	  $(BIN)/python -c "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); \
	  print(sys.argv[4], sys.argv[-1], round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9, 2), 'GB max RSS')" \
	  $(BIN)/python train.py --method $$method --preset demo --data fashion-mnist --max-steps 4 --no-progress \
	  --out $$(mktemp -d)/run --set backward_per_resolution=$$per_res; done; done

bench-app: setup
	$(BIN)/python -m app.bench

clean:
	rm -rf $(VENV) .pytest_cache
