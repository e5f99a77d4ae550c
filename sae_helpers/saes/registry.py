"""Architecture registry: name -> SAE class, and SAELens architecture names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .base import SAE

_ARCHITECTURES: dict[str, type[SAE]] = {}
T = TypeVar("T")


def register(cls: T) -> T:
    """Class decorator adding an SAE class under its ``architecture`` name."""
    _ARCHITECTURES[cls.architecture] = cls  # type: ignore[attr-defined]
    return cls


def architectures() -> list[str]:
    """The registered architecture names."""
    return sorted(_ARCHITECTURES)


def get_sae_class(architecture: str) -> type[SAE]:
    """The SAE class for ``architecture``, with an error listing the known ones."""
    if architecture not in _ARCHITECTURES:
        raise ValueError(
            f"Unknown SAE architecture {architecture!r}. Known architectures: "
            f"{', '.join(architectures())}."
        )
    return _ARCHITECTURES[architecture]


def from_saelens_architecture(name: str) -> type[SAE]:
    """The SAE class that reads SAELens's ``cfg.json`` ``architecture`` value ``name``."""
    if name in _ARCHITECTURES and _ARCHITECTURES[name].saelens_architecture == name:
        return _ARCHITECTURES[name]  # "jumprelu" is ours; BatchTopK SAEs also save as it
    for cls in _ARCHITECTURES.values():
        if cls.saelens_architecture == name:
            return cls
    known = sorted({c.saelens_architecture for c in _ARCHITECTURES.values()})
    raise ValueError(
        f"SAELens architecture {name!r} is not supported. Supported: {', '.join(known)}."
    )


def create_sae(architecture: str, d_in: int, d_sae: int, **kwargs: Any) -> SAE:
    """Build an SAE of a registered architecture (weights zero; call ``init_weights``)."""
    return get_sae_class(architecture)(d_in, d_sae, **kwargs)
