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
# torch comes first and pinned, and stays pinned as a constraint for everything after it: the
# CPU wheel of torch 2.13.0 is the one pip finds on local disk, while any other version (or
# letting a dependency pick torch) downloads a multi-GB CUDA build.
#
# Versions that worked (2026-11, Python 3.11.7): torch 2.13.0+cpu, sae-lens 6.54.12 (the newest
# SAELens at the time; `pip install --dry-run` showed it resolves with torch 2.13.0, which it
# accepts as torch>=2.6 through transformer-lens 3.9.0), which pulled numpy 2.4.6,
# safetensors 0.8.0 and tqdm 4.70.1, all our package imports beyond torch.
set -euo pipefail

TORCH_VERSION=2.13.0
SAELENS_VERSION=6.54.12

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="${SAELENS_VENV:-$here/.saelens-venv}"
python="${PYTHON:-python3.11}"

"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$TORCH_VERSION" > "$constraints"

"${pip[@]}" "torch==$TORCH_VERSION"
"${pip[@]}" -c "$constraints" "sae-lens==$SAELENS_VERSION"
"${pip[@]}" -c "$constraints" --no-deps -e "$root"
# Our package's own imports (sae-lens already brings them; listed so a change there shows up).
"${pip[@]}" -c "$constraints" numpy safetensors tqdm

"$venv/bin/python" - <<PY
import torch, sae_lens, sae_helpers  # noqa: F401
assert torch.__version__.split("+")[0] == "$TORCH_VERSION", torch.__version__
print(f"ok: torch {torch.__version__}, sae-lens {sae_lens.__version__}, sae_helpers from {sae_helpers.__file__}")
PY
