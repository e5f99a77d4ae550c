"""Parameter profiles: named sets of a chapter's parameters, shipped inside the package.

A notebook's parameters cell holds its quick defaults (``profile = "quick"``: nothing is
changed). ``profile = "gpu"`` (or ``papermill -p profile gpu``) makes the chapter's setup
(:func:`sae_book.common.setup`) replace the values listed in
``sae_book/profiles/gpu/<notebook>.yaml``: GPT-2 small by name through TransformerLens,
a streamed Hugging Face dataset, and widths and token counts near the papers' scale, sized for
a Colab T4. The files are package data, so a ``pip install`` (Colab) has them without a clone.
A profile may also be the path of a YAML file of the same form. A profile's values win over
the parameters cell and papermill's ``-p`` for the keys it lists (edit a copy of the file to
change one of them).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["QUICK", "apply_profile", "load_profile", "profile_names", "type_matches"]

#: The profile of the notebooks' own defaults: nothing to change.
QUICK = "quick"


def profile_names() -> list[str]:
    """The profiles that ship with the package (besides ``"quick"``)."""
    return sorted(entry.name for entry in resources.files(__name__).iterdir()
                  if entry.is_dir() and not entry.name.startswith("_"))


def _profile_text(profile: str, notebook: str) -> tuple[str, str]:
    path = Path(profile).expanduser()
    if profile.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise FileNotFoundError(f"profile={profile!r}: no such YAML file. Pass {QUICK!r}, one of "
                                    f"{profile_names()} or the path of an existing YAML file.")
        return path.read_text(encoding="utf-8"), str(path)
    if profile not in profile_names():
        raise ValueError(f"Unknown profile {profile!r}: use {QUICK!r}, one of {profile_names()}, or the path of a "
                         "YAML file of parameters.")
    entry = resources.files(__name__) / profile / f"{notebook}.yaml"
    if not entry.is_file():
        raise ValueError(f"The profile {profile!r} has no parameters for the notebook {notebook!r} "
                         f"(sae_book/profiles/{profile}/{notebook}.yaml is missing).")
    return entry.read_text(encoding="utf-8"), f"sae_book/profiles/{profile}/{notebook}.yaml"


def load_profile(profile: str, notebook: str) -> dict[str, Any]:
    """The parameter values of ``profile`` for ``notebook`` (e.g. ``"01_training"``); ``{}`` for ``"quick"``."""
    if profile == QUICK:
        return {}
    import yaml

    text, where = _profile_text(profile, notebook)
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise ValueError(f"{where} must be a mapping of parameter names to values.")
    return values


def type_matches(default: Any, value: Any) -> bool:
    """Whether ``value`` may stand for a parameter whose default is ``default`` (an int for a float,
    anything for a ``None`` default, ``None`` for anything)."""
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_profile(values: dict[str, Any], params: dict[str, Any], where: str) -> None:
    """Every key of ``values`` is a parameter of ``params`` and has its type (an int may stand for a float,
    anything for a ``None`` default); otherwise a ``ValueError`` naming the file, the key and the fix."""
    unknown = [key for key in values if key not in params]
    if unknown:
        raise ValueError(f"{where}: {unknown} are not parameters of this notebook (its parameters: "
                         f"{sorted(params)}). Remove or rename them.")
    wrong = [f"{key}={values[key]!r} (the notebook's default is {params[key]!r})"
             for key in values if not type_matches(params[key], values[key])]
    if wrong:
        raise ValueError(f"{where}: wrong types: {'; '.join(wrong)}. Give each the type of its default.")


def apply_profile(namespace: dict[str, Any], params: dict[str, Any], notebook: str) -> dict[str, Any]:
    """Set the values of profile ``params["profile"]`` for ``notebook`` in ``namespace`` (a notebook's
    ``globals()``), after checking them against ``params``; returns the values set."""
    profile = params.get("profile", QUICK)
    values = load_profile(profile, notebook)
    check_profile(values, params, f"profile {profile!r} for {notebook}")
    namespace.update(values)
    return values
