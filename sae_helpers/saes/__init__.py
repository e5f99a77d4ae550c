"""SAE architectures: one module each, one shared contract (:class:`SAE`)."""

from .base import SAE, SAEOutput
from .batchtopk import BatchTopKSAE
from .gated import GatedSAE
from .jumprelu import JumpReluSAE, JumpReluTrainingSAE
from .provenance import Provenance
from .registry import architectures, create_sae, from_saelens_architecture, get_sae_class
from .relu import ReluSAE
from .topk import TopKSAE

__all__ = [
    "SAE",
    "SAEOutput",
    "BatchTopKSAE",
    "GatedSAE",
    "JumpReluSAE",
    "JumpReluTrainingSAE",
    "Provenance",
    "ReluSAE",
    "TopKSAE",
    "architectures",
    "create_sae",
    "from_saelens_architecture",
    "get_sae_class",
]
