"""SAE architectures: one module each, one shared contract (:class:`SAE`)."""

from .base import SAE, SAEOutput
from .gated import GatedSAE
from .jumprelu import JumpReluSAE
from .registry import architectures, create_sae, from_saelens_architecture, get_sae_class
from .relu import ReluSAE

__all__ = [
    "SAE",
    "SAEOutput",
    "GatedSAE",
    "JumpReluSAE",
    "ReluSAE",
    "architectures",
    "create_sae",
    "from_saelens_architecture",
    "get_sae_class",
]
