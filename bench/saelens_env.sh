#!/usr/bin/env bash
# Creates bench/.saelens-venv: a throwaway environment holding SAELens beside sae_helpers, for
# bench/vs_saelens.py, bench/contention.py and tests/test_saelens_roundtrip.py (which loads our saved
# SAEs with SAELens itself; CI builds this environment first). SAELens is NOT a dependency of the
# project (the folder is git-ignored): it needs transformer-lens < 4, ours is 4.x.
#
#   bash bench/saelens_env.sh                      # 1.9 GB; 160 s of CPU (measured 2026-11 from PyPI with
#                                                  # no pip cache: 13.8 min wall on 2 cores at load 10)
#   bench/.saelens-venv/bin/python bench/vs_saelens.py
#   SAELENS_VENV=/elsewhere bash bench/saelens_env.sh   # another location (then SAELENS_PYTHON=/elsewhere/bin/python
#                                                       # for the round-trip test)
#
# Every package is pinned: bench/saelens-constraints.txt lists each one's exact version (the `pip
# freeze` of a working environment) and every install below passes it with -c, so a new upstream
# release cannot change this environment (transformers 5.25.0 once arrived unasked, with the `kernels`
# package it imports). It pins torch==2.13.0 too: the CPU wheel of torch 2.13.0 is the one pip finds on
# local disk, while any other version (or letting a dependency pick torch) downloads a multi-GB CUDA build.
# To move to newer releases, refresh the file with one command, then run the round-trip test:
#
#   SAELENS_REFRESH=1 bash bench/saelens_env.sh    # rebuilds the venv from scratch with only torch (and
#                                                  # sae-lens==SAELENS_VERSION) pinned, rewrites the file
#
# Versions pinned (2026-12, Python 3.11.7): torch 2.13.0+cpu, sae-lens 6.54.12 (accepts torch>=2.6
# through transformer-lens 3.9.0), transformers 5.25.0, kernels 0.19.1, numpy 2.4.6, safetensors 0.8.0,
# tqdm 4.70.1 (the last three and torch: all our package imports), setuptools 84.2.1 (torch needs it).
set -euo pipefail

TORCH_VERSION=2.13.0
SAELENS_VERSION=6.54.12

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="${SAELENS_VENV:-$here/.saelens-venv}"
python="${PYTHON:-python3.11}"
pinned="$here/saelens-constraints.txt"

if [ "${SAELENS_REFRESH:-}" = 1 ]; then
  "$python" -m venv --clear "$venv"
  constraints="$(mktemp)"
  trap 'rm -f "$constraints"' EXIT
  echo "torch==$TORCH_VERSION" > "$constraints"
else
  "$python" -m venv "$venv"
  constraints="$pinned"
  grep -qx "torch==$TORCH_VERSION" "$constraints" || { echo "$constraints must pin torch==$TORCH_VERSION" >&2; exit 1; }
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints")

"${pip[@]}" "torch==$TORCH_VERSION"
"${pip[@]}" "sae-lens==$SAELENS_VERSION"
"${pip[@]}" --no-deps -e "$root"
# Our package's own imports (sae-lens already brings them; listed so a change there shows up).
"${pip[@]}" numpy safetensors tqdm

"$venv/bin/python" - <<PY
import torch, sae_lens, sae_helpers  # noqa: F401
assert torch.__version__.split("+")[0] == "$TORCH_VERSION", torch.__version__
print(f"ok: torch {torch.__version__}, sae-lens {sae_lens.__version__}, sae_helpers from {sae_helpers.__file__}")
PY

if [ "${SAELENS_REFRESH:-}" = 1 ]; then
  {
    echo "# Every package of bench/.saelens-venv at its exact version: bench/saelens_env.sh installs with -c this file."
    echo "# Written by \`SAELENS_REFRESH=1 bash bench/saelens_env.sh\` (pip freeze; torch without its +cpu label)."
    "$venv/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check \
      | grep -v '^pip==' | sed "s/^torch==.*/torch==$TORCH_VERSION/"
  } > "$pinned"
  echo "wrote $pinned ($(grep -cv '^#' "$pinned") packages)"
fi
