"""Fast paths of the SAE architectures: fused training steps and sparse decoder kernels.

The architecture files (:mod:`sae_helpers.saes`) hold each SAE as its paper writes it, in
plain autograd; this package holds what makes training fast, and does not import them:

* :mod:`.relu`, :mod:`.gated`: the ReLU and Gated SAEs' training steps
  (``ReluTrainingStep``, ``GatedTrainingStep``), each a ``torch.autograd.Function`` with a
  hand-written backward that gives the plain forward's values and gradients. ``ReluSAE(x)`` and ``GatedSAE(x)`` run
  them; ``sae(x, fused=False)`` runs the plain forward instead.
* :mod:`.blocks`: the row-blocked elementwise passes and dense decode they share.
* :mod:`.sparse`: :class:`~.sparse.Support` (the positions of a sparse latent matrix, also
  the TopK selections' type) and the products with it (``spmm``, ``sampled_mm``, ``spmm_t``,
  ``decode_support``, ``embedding_decode``), and the choice of the decoder path, passed per
  call: ``sae(x, decoder="auto" | "dense" | "sparse")``.
* :mod:`.topk`: BatchTopK's selection (the ``k N`` largest of a batch), prefiltered.
"""
