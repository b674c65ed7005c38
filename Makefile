# infocut: `make demo` and `make test` work on a fresh machine (they create .venv themselves).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test lint artifact weights protos bench clip clean

# Stamps record which extras the venv holds, so each target installs only what it needs.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.cloud: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[cloud]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[dev]'
	touch $@ $(VENV)/.cloud

## demo: cloud + edge on loopback streaming the bundled Ped2 clip; REST on :8000 (no torch needed)
demo: $(VENV)/.cloud
	$(BIN)/infocut demo

## test: the whole suite (needs ../shared for the Ped2 and model tests; they skip without it)
test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check .

## artifact: rebuild the committed demo artifact (MobileNetV2 from the shared TFLite, scorer fitted on Ped2)
artifact: $(VENV)/.dev build/mobilenet_v2.npz
	$(BIN)/infocut split mobilenet_v2 --cut $(DEMO_CUT) --bits $(DEMO_BITS) --coder $(DEMO_CODER) --gap 2 --topk 50 \
		--out artifacts/demo

DEMO_CUT   ?= block5
DEMO_BITS  ?= 3
DEMO_CODER ?= ans

## weights: float32 MobileNetV2 weights dequantized from the shared quantized TFLite file (not committed)
weights: build/mobilenet_v2.npz

build/mobilenet_v2.npz: splitter/models/tflite_import.py | $(VENV)/.dev
	$(BIN)/python -m splitter.models.tflite_import --out $@

## protos: regenerate the gRPC stubs (tests/test_protos.py checks they are current)
protos: $(VENV)/.dev
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. protos/infocut.proto

## bench: per-cut rate / latency / AUROC of the ResNet-20 split (bench/results/slice.json)
bench: $(VENV)/.dev
	$(BIN)/python bench/slice.py

## clip: rebuild assets/ped2_test01.mp4 from ../shared
clip: $(VENV)/.dev
	$(BIN)/python bench/make_clip.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
