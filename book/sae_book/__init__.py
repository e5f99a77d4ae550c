"""sae_book: the book's chapters as code, built on the library :mod:`sae_helpers`.

A chapter's code cells read as calls and figures; the logic they call lives here, one module
per chapter, beside what several chapters share. The library never imports this package.

* :mod:`.common` -- the parameters in effect (:func:`~.common.setup`), the data paths
  (``cache``, ``runs``, ``results`` under a chapter's ``data_root``), one harvest of the
  training and held-out caches, the BatchTopK family of chapters 03 and 04;
* :mod:`.known_features` (00), :mod:`.training` (01), :mod:`.shrinkage` (02),
  :mod:`.completeness` (03), :mod:`.atomicity` (04): each chapter's computations and its
  verdicts. A verdict is a small structured result (the numbers, and booleans for the
  sentences they decide, against thresholds that are named module constants) with a
  ``render_*`` function that writes its markdown;
* :mod:`.record` -- a chapter's headline sentence and key numbers, stored in the executed
  notebook as hidden myst-nb glue outputs and read back by :func:`~.record.read_record` (the
  front page, the batch runner);
* :mod:`.plotting` -- the book's figure style and figures; :mod:`.profiles` -- named parameter
  sets (``profile = "gpu"``).

Modules are imported on use (``from sae_book import shrinkage``), so one chapter loads only its own.
"""
