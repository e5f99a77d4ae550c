"""A tiny randomly initialised Llama model behind a TransformerBridge, built offline.

For tests and quick notebook demos: two layers, ``d_model`` 16, a 64-word vocabulary,
no download and no file left behind. Its activations mean nothing; its purpose is to
exercise the same code paths (hooks, splicing, losses) as the real model in well
under a second.
"""

from __future__ import annotations

from typing import Any

import torch

#: The name :func:`tiny_model` records as ``model.model_name`` (followed by ``-seed<N>``).
TINY_MODEL_NAME = "tiny-llama"

#: Vocabulary: special tokens first (``<bos>`` is id 1, as ``<|im_start|>`` is in SmolLM2),
#: then the words of :data:`TINY_WORDS`.
TINY_SPECIAL_TOKENS = ("<unk>", "<bos>", "<eos>")
TINY_WORDS = tuple(
    "the a of and to in is was it that he she they we you for on with as at by this from "
    "be have not but or an are his her their one all were when there which will been "
    "more said so if out up what about into than them can only".split()
)


def tiny_tokenizer() -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over :data:`TINY_WORDS` (no download).

    Unknown words map to ``<unk>``. Like the tokenizers TransformerLens sets up (and
    :func:`~sae_helpers.models.load_model`'s), calling it on text prepends ``<bos>``
    (``add_special_tokens=False`` gives the bare ids).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*TINY_SPECIAL_TOKENS, *TINY_WORDS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<eos>",
        add_bos_token=True,  # else TransformerLens re-loads the tokenizer by name (from the hub)
        name_or_path=f"sae-helpers/{TINY_MODEL_NAME}",
    )


def tiny_hf_model(
    seed: int = 0,
    *,
    n_layers: int = 2,
    d_model: int = 16,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 32,
    init_std: float = 0.3,
) -> tuple[Any, Any]:
    """The Hugging Face side of :func:`tiny_model`: ``(LlamaForCausalLM, tokenizer)``,
    float32, eval mode, eager attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=256,
        initializer_range=init_std,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_model = LlamaForCausalLM(config)
    return hf_model.eval(), tokenizer


def tiny_model(
    seed: int = 0,
    *,
    n_layers: int = 2,
    d_model: int = 16,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 32,
    init_std: float = 0.3,
    dtype: str | torch.dtype = "float32",
) -> Any:
    """A randomly initialised Llama model wrapped in a TransformerLens ``TransformerBridge``.

    Parameters
    ----------
    seed
        Seeds the weight initialisation (the global torch RNG is left untouched).
    n_layers, d_model, n_heads, n_kv_heads, d_mlp
        The architecture (grouped-query attention when ``n_kv_heads < n_heads``, as in SmolLM2).
    init_std
        Standard deviation of the initial weights: larger than Llama's 0.02, so that the
        random model makes confident, input-dependent predictions and ablating a site
        changes the loss clearly. (A random model predicts worse than uniform, so
        zero-ablating the residual stream can *lower* its loss.)
    dtype
        Parameter dtype (``"float32"``, ``"float64"`` ...).

    Returns
    -------
    TransformerBridge
        On the CPU in eval mode, with ``model.model_name == "tiny-llama-seed<seed>"`` and
        the vocabulary of :func:`tiny_tokenizer` (``model.tokenizer``; ``<bos>`` is id 1).
    """
    from .._dtypes import resolve_dtype
    from .loading import wrap_hf_model

    hf_model, tokenizer = tiny_hf_model(
        seed, n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, d_mlp=d_mlp,
        init_std=init_std,
    )
    return wrap_hf_model(
        hf_model.to(resolve_dtype(dtype)), tokenizer, boot_name=f"sae-helpers/{TINY_MODEL_NAME}",
        model_name=f"{TINY_MODEL_NAME}-seed{seed}", device="cpu",
    )
