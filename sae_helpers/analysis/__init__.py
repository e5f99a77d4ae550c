"""Analysis of trained SAEs: feature inspection (top-activating contexts)."""

from .inspection import contexts_html, top_activating_contexts

__all__ = ["contexts_html", "top_activating_contexts"]
