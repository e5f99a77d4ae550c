"""The SAELens half of tests/test_saelens_roundtrip.py, run by the SAELens environment's python
(bench/saelens_env.sh), not ours: SAELens needs transformer-lens < 4.

    python -I tests/saelens_side.py INPUTS.safetensors OUT_DIR SAE_DIR [SAE_DIR ...]

Loads each SAE directory with ``sae_lens.SAE.load_from_disk`` (SAELens's own cfg.json parsing),
encodes and decodes the activations ``x`` of INPUTS, and writes to OUT_DIR: ``NAME.safetensors``
(``latents``, ``reconstruction``), ``NAME/`` (the SAE as SAELens's ``save_model`` writes it) and
``summary.json`` (per SAE: SAELens's architecture, its class, its config's metadata and ``k``).
Imports nothing from sae_helpers.

    python -I tests/saelens_side.py --sys-path

prints, as JSON, this interpreter's ``sys.path`` and the file ``import kernels`` would load, importing
nothing else: the check that ``tests/`` (whose ``kernels/`` package would shadow the one transformers
imports) is not on the path. The round-trip test runs this script isolated (``python -I``) for that reason.

    python -I tests/saelens_side.py --config-fields

prints, as JSON, every field (and default) of the inference config of each SAELens architecture
that sae_helpers reads, so that the test can check each field's reading one by one.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def search_path() -> dict:
    """This interpreter's sys.path, and where ``import kernels`` would come from (None: nowhere)."""
    spec = importlib.util.find_spec("kernels")
    return {"sys_path": sys.path, "kernels": spec.origin if spec else None}


def config_fields() -> dict:
    """For each SAELens architecture sae_helpers reads: its inference config's fields and defaults."""
    import dataclasses

    from sae_lens.saes.gated_sae import GatedSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAEConfig

    configs = {"standard": StandardSAEConfig, "gated": GatedSAEConfig, "jumprelu": JumpReLUSAEConfig,
               "topk": TopKSAEConfig}
    return {arch: {f.name: (repr(f.default) if f.default is not dataclasses.MISSING else None)
                   for f in dataclasses.fields(config)} for arch, config in configs.items()}


def main(inputs: str, out_dir: str, *sae_dirs: str) -> None:
    import sae_lens  # here, not above: --sys-path must import nothing that imports kernels
    import torch
    from sae_lens import SAE
    from safetensors.torch import load_file, save_file

    x = load_file(inputs)["x"]
    out = Path(out_dir)
    summary = {"sae_lens": sae_lens.__version__}
    for sae_dir in map(Path, sae_dirs):
        sae = SAE.load_from_disk(str(sae_dir), device="cpu")
        with torch.no_grad():
            latents = sae.encode(x)
            reconstruction = sae.decode(latents)
        save_file({"latents": latents.contiguous(), "reconstruction": reconstruction.contiguous()},
                  str(out / f"{sae_dir.name}.safetensors"))
        sae.save_model(out / sae_dir.name)
        summary[sae_dir.name] = {"architecture": sae.cfg.architecture(), "class": type(sae).__name__,
                                 "metadata": sae.cfg.metadata.to_dict(), "k": getattr(sae.cfg, "k", None),
                                 "dtype": sae.cfg.dtype}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    if sys.argv[1:] == ["--sys-path"]:
        print(json.dumps(search_path()))
    elif sys.argv[1:] == ["--config-fields"]:
        print(json.dumps(config_fields()))
    else:
        main(*sys.argv[1:])
