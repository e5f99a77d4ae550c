"""Each chapter's logic, so that a chapter's code cells read as calls and figures.

* :mod:`.common` -- what several chapters repeat: the parameters in effect
  (:func:`~.common.setup`), the data paths (``cache``, ``runs``, ``results`` under a chapter's
  ``data_root``), one harvest of the training and held-out caches, the BatchTopK family of
  chapters 03 and 04 (its SAEs take their model and site from the activation cache);
* :mod:`.known_features` (00), :mod:`.training` (01), :mod:`.shrinkage` (02),
  :mod:`.completeness` (03), :mod:`.atomicity` (04): each chapter's computations and its
  verdicts. A verdict is a small structured result (the numbers, and booleans for the
  sentences they decide, against thresholds that are named module constants) with a
  ``render_*`` function that writes its markdown;
* :mod:`.record` -- a chapter's headline sentence and key numbers, stored in the executed
  notebook as hidden myst-nb glue outputs and read back by :func:`~.record.read_record` (the
  front page, the batch runner).
"""

from . import atomicity, common, completeness, known_features, record, shrinkage, training

__all__ = ["atomicity", "common", "completeness", "known_features", "record", "shrinkage", "training"]
