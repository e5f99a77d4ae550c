"""How an SAE was trained: the record training attaches to it, conversions carry and files keep."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Provenance:
    """An SAE's training record, ``sae.provenance`` (``None`` for an SAE that was not trained here).

    ``config`` is the :class:`~sae_helpers.training.TrainConfig` it was trained with, as a dict
    (:meth:`TrainConfig.to_dict`; ``None`` when unknown), and ``log`` the training log: one dict
    per logging step (``step``, ``loss``, the loss terms, ``l0``, ``fvu``, ``dead_fraction``,
    ``lr`` ...). Set by ``train_sae`` / ``train_saes``, kept by every conversion
    (``for_inference``, ``to_jumprelu``), saved by ``save_sae`` as ``training_config.json`` and
    ``training_log.json`` beside ``cfg.json`` and read back by ``load_sae``.
    """

    config: dict[str, Any] | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
