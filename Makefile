# Two commands do all the set-up on a fresh Debian/Ubuntu machine:
#   make demo   - builds the environment, synthesizes the embedded corpus, trains a small CTC model
#                 on it (about 9 minutes on 2 cores), evaluates it on unseen voices and transcribes 3 files
#   make test   - builds the environment, then runs the test suite
# Each creates .venv when missing and installs what is missing (espeak-ng, flite, sox and
# PortAudio through apt-get; the Python packages through pip).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/synthetic
SENTENCES ?= 3000
SYSTEM_TOOLS := espeak-ng flite sox
SYSTEM_LIBS := libportaudio2
# test processes: 2 fills the 2-core machine (pytest-xdist, one test file per process); 0 = one process
TEST_JOBS ?= 2

.PHONY: demo test bench system-deps venv clean-data

demo: system-deps venv
	$(VENV)/bin/asr prepare synthetic --out $(DATA) --sentences $(SENTENCES)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DATA=$(DATA) EXP=exp/synthetic/demo recipes/synthetic/run.sh demo
	$(VENV)/bin/asr transcribe --model exp/synthetic/demo/best.pt $$(ls $(DATA)/librispeech/test/*/*/*.flac | head -3)

test: system-deps venv
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadfile

bench: venv
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) benchmarks/frontend.py
	$(PY) benchmarks/train_throughput.py

venv: $(VENV)/.installed

system-deps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	for lib in $(SYSTEM_LIBS); do dpkg-query -W -f='$${Status}' $$lib 2>/dev/null | grep -q "ok installed" || missing="$$missing $$lib"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

clean-data:
	rm -rf $(DATA)
