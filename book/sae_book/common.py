"""What several chapters repeat: the parameters-in-effect table, where a chapter's data live,
one harvest of held-out and training activations, and the site metadata given to SAEs.

The path convention (all under a chapter's ``data_root``, git-ignored):

* ``<data_root>/cache``: activation caches, shared by every chapter whose harvest parameters
  agree (:func:`activation_caches`);
* ``<data_root>/runs/<group>/<site>``: trained SAEs, checkpointed (:func:`run_dir`); chapters
  03 and 04 share ``runs/family``;
* ``<data_root>/results/<name>_<model_name>-<hash>.csv``: tables a chapter writes, named by the
  parameters in effect, which ``<name>_<model_name>-<hash>.parameters.json`` lists (:func:`write_results`):
  a run with other parameters (``make test``'s quick defaults, another seed) never overwrites the
  book's tables.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pandas as pd

from .profiles import type_matches

__all__ = ["PAPER_TOKENS", "Summary", "activation_caches", "cache_dir", "family_settings", "family_snapshots",
           "parameters", "parameters_table", "plateau_settings", "render_trend", "results_file", "run_dir", "setup",
           "snapshot_steps", "train_family", "trend_display", "write_results"]

#: The papers' training budgets: Rajamanoharan et al. 2024 and Leask et al. 2025 trained on 1.2-1.6B tokens.
PAPER_TOKENS = 1.2e9


def plateau_settings(plateau_tolerance: float | None) -> dict[str, Any]:
    """The book's schedule: a constant learning rate after warm-up, and with ``plateau_tolerance`` each
    SAE stops at its first plateau of held-out FVU and L0 (``steps`` is then a cap)."""
    return {"lr_decay_start": None, "plateau_tolerance": plateau_tolerance}


def snapshot_steps(steps: int, n_snapshots: int) -> list[int]:
    """The steps at which a run of at most ``steps`` keeps snapshots: ``steps / 2, steps / 4, ...``,
    ``n_snapshots`` of them (the final SAE is the last point of every dose-response)."""
    from sae_helpers.training import geometric_steps

    if n_snapshots < 1:
        return []
    return geometric_steps(max(1, steps >> n_snapshots), steps)[:-1][-n_snapshots:]


def trend_display(trends: dict[str, pd.DataFrame], labels: dict[str, str]) -> pd.DataFrame:
    """The trends of :func:`~sae_helpers.evaluation.training_trend` (``{metric: table}``) as one table:
    a row per SAE and number, its value at the last two snapshots and the relative change (%)."""
    rows = [{"SAE": row.name, "number": labels.get(metric, metric), "activations before": f"{row.previous_tokens:,}",
             "activations": f"{row.tokens:,}", "before": row.previous, "last": row.last,
             "change %": round(100 * row.change, 1)}
            for metric, table in trends.items() for row in table.itertuples()]
    return pd.DataFrame(rows).set_index(["SAE", "number"]) if rows else pd.DataFrame()


def render_trend(trends: dict[str, pd.DataFrame], labels: dict[str, str], tokens_seen: int,
                 tolerance: float | None = 0.02) -> str:
    """One paragraph: which numbers still moved by more than ``tolerance`` between each run's last two
    snapshots, and which way, and how far ``tokens_seen`` is from the papers' budget (:data:`PAPER_TOKENS`)."""
    tolerance = 0.02 if tolerance is None else tolerance
    moving = [f"{labels.get(metric, metric)} of `{row.name}` ({'up' if row.change > 0 else 'down'} "
              f"{abs(row.change):.1%})" for metric, table in trends.items() for row in table.itertuples()
              if abs(row.change) > tolerance]
    steady = ("every number changed by at most " f"{tolerance:.0%}" if not moving
              else "still moving by more than " f"{tolerance:.0%}: " + ", ".join(moving))
    return (f"Between each run's last two snapshots (the last doubling of its training), {steady}. The runs saw "
            f"at most {tokens_seen:,} training activations, {PAPER_TOKENS / max(tokens_seen, 1):,.0f} times fewer "
            f"than the papers' {PAPER_TOKENS / 1e9:.1f} billion tokens: a number still moving here may move "
            "further in their regime.")


class Summary(NamedTuple):
    """A chapter's result for :mod:`~sae_book.record`: its one-sentence headline (with its
    control or null beside it) and its key numbers, both computed from the chapter's verdicts."""

    headline: str
    key_numbers: dict[str, float | int | str | bool | None]


#: In Colab the chapters' default ``data_root`` ("../data", beside the repository's notebooks/) would be
#: ``/data``, outside the file browser; there it becomes this folder instead.
COLAB_DATA_ROOT = "/content/data"
DEFAULT_DATA_ROOT = "../data"
_PARAMETER_TYPES = (bool, int, float, str, list, tuple, dict, type(None))
_NOT_PARAMETERS = {"In", "Out", "exit", "quit", "get_ipython"}
#: The parameters :func:`setup` last put in effect in this process (a chapter's kernel): they name
#: the chapter's results files (:func:`write_results`).
_in_effect: dict[str, Any] | None = None


def parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """A notebook's parameters: the plain values (numbers, strings, lists, ``None``) of
    ``namespace`` (its ``globals()`` right after the parameters cell), in definition order.

    Names starting with ``_``, IPython's own and modules, functions or classes are left out, so
    the parameters cell (with papermill's overrides) is the one place that lists them.
    """
    return {name: value for name, value in namespace.items()
            if not name.startswith("_") and name not in _NOT_PARAMETERS and isinstance(value, _PARAMETER_TYPES)
            and not isinstance(value, ModuleType)}


def parameters_table(params: dict[str, Any]) -> pd.DataFrame:
    """The environment (versions, device) and every parameter in effect, one row each, indexed by
    ``(what, name)``: ``what`` is ``"environment"`` or ``"parameter"``; values shown whole (lists
    as their text)."""
    from sae_helpers.reproducibility import environment_report

    report = environment_report(params)
    rows = [("environment", name, value) for name, value in report.items() if name != "parameters"]
    rows += [("parameter", name, value) for name, value in report.get("parameters", {}).items()]
    table = pd.DataFrame([{"what": what, "name": name, "value": value if isinstance(value, str) else repr(value)}
                          for what, name, value in rows])
    return table.set_index(["what", "name"])


def setup(namespace: dict[str, Any], notebook: str | None = None) -> pd.DataFrame:
    """A chapter's first cell: apply the profile, set the device, the text, the seed and the plot style;
    returns the table of the environment and the parameters in effect (:func:`parameters`).

    ``namespace`` is the notebook's ``globals()``. With a ``profile`` parameter other than ``"quick"``
    the values of that profile for ``notebook`` (e.g. ``"01_training"``) replace the parameters'
    (:mod:`sae_book.profiles`). A ``device`` parameter (``"auto"``, ``"cpu"``, ``"cuda"`` ...) becomes
    the default device of model loading and training, a ``dataset`` parameter (with ``text_column``)
    the default text of harvesting and evaluation windows. In Colab the default ``data_root``
    (``"../data"``) becomes :data:`COLAB_DATA_ROOT` (set another, e.g. a mounted Drive folder, to keep
    caches and SAEs between sessions). A relative ``data_root`` is read from the notebook's folder
    (:func:`notebook_folder`) whatever the working directory.
    """
    from sae_helpers.data.text import set_default_text
    from sae_helpers.reproducibility import set_default_device, set_seed

    from . import plotting
    from .profiles import apply_profile

    if "google.colab" in sys.modules and namespace.get("data_root") == DEFAULT_DATA_ROOT:
        namespace["data_root"] = COLAB_DATA_ROOT
    folder = notebook_folder(notebook) if notebook is not None else Path.cwd()
    data_root = namespace.get("data_root")
    if isinstance(data_root, str) and not Path(data_root).expanduser().is_absolute() and folder != Path.cwd():
        namespace["data_root"] = os.path.normpath(folder / data_root)  # as if run from the notebook's folder
    params = parameters(namespace)
    if notebook is not None:
        defaults = notebook_defaults(notebook, folder)
        if defaults is not None:
            check_parameters(params, defaults, notebook)
            check_profile_overrides(params, defaults, notebook)
        apply_profile(namespace, params, notebook)
        params = parameters(namespace)
    set_default_device(params.get("device", "auto"))
    warn_if_gpu_profile_on_cpu(params.get("profile", "quick"))
    set_default_text(params.get("dataset"), params.get("text_column", "text"))
    set_seed(params["seed"])
    plotting.use_book_style()
    pd.set_option("display.max_colwidth", None)  # tables show long values (lists, paths) whole
    global _in_effect
    _in_effect = dict(params)
    return parameters_table(params)


def notebook_folder(notebook: str) -> Path:
    """Where ``<notebook>.ipynb`` is: the working directory (papermill --cwd notebooks, nbval, Jupyter),
    else this repository's ``notebooks/`` (papermill run from elsewhere), else the working directory
    (Colab, or an installed package). Relative paths in the parameters are read from there."""
    cwd = Path.cwd()
    if (cwd / f"{notebook}.ipynb").is_file():
        return cwd
    repository = Path(__file__).resolve().parents[2] / "notebooks"
    return repository if (repository / f"{notebook}.ipynb").is_file() else cwd


def notebook_defaults(notebook: str, folder: str | Path = ".") -> dict[str, Any] | None:
    """The defaults of ``<folder>/<notebook>.ipynb``'s parameters cell (the literal assignments, by name);
    ``None`` when the notebook is not there (Colab runs it from elsewhere: nothing to check against)."""
    import ast

    path = Path(folder) / f"{notebook}.ipynb"
    if not path.is_file():
        return None
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    source = "".join(tagged[0].get("source", [])) if tagged else None
    if source is None:
        return None
    defaults = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                defaults[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return defaults


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def check_parameters(params: dict[str, Any], defaults: dict[str, Any], notebook: str) -> None:
    """Refuse, before any work, a parameter the notebook does not have (a misspelt ``-p stepz 5`` would
    otherwise run the defaults), a value of another type than its default (``-p l1_relu "[2.0]"`` arrives
    as text: lists need ``-y``), and a non-positive value where the default is positive (counts, widths,
    rates)."""
    import difflib

    where = f"{notebook}.ipynb's parameters"
    unknown = [name for name in params if name not in defaults]
    if unknown:
        hints = "; ".join(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                          for name in unknown for close in [difflib.get_close_matches(name, defaults, n=1)])
        raise ValueError(f"{hints}: not among {where} ({', '.join(defaults)}). Fix the name in papermill's -p/-y "
                         f"or in book/params/{notebook}.yaml.")
    problems = []
    for name, value in params.items():
        default = defaults[name]
        if isinstance(default, (list, tuple)) and isinstance(value, str):
            problems.append(f"{name}={value!r} is text, the default {default!r} a list: pass lists as YAML, "
                            f"papermill -y '{name}: {value}' (not -p)")
        elif not type_matches(default, value):
            problems.append(f"{name}={value!r} ({type(value).__name__}), the default is {default!r} "
                            f"({type(default).__name__})")
        elif _positive(default) and not _positive(value) and value is not None:
            problems.append(f"{name}={value!r} must be > 0 (default {default!r})")
        elif isinstance(default, (list, tuple)) and default and all(map(_positive, default)) and not all(
                map(_positive, value)):
            problems.append(f"{name}={value!r}: every element must be > 0 (default {default!r})")
    if problems:
        raise ValueError(f"Bad parameters for {notebook}: " + "; ".join(problems) + ".")


def check_profile_overrides(params: dict[str, Any], defaults: dict[str, Any], notebook: str) -> None:
    """A value given for a parameter that the chosen profile also sets would be replaced silently: refuse it."""
    from .profiles import QUICK, load_profile

    profile = params.get("profile", QUICK)
    if profile == QUICK:
        return
    values = load_profile(profile, notebook)
    clashes = [f"{name}={params[name]!r} (the profile sets {values[name]!r})" for name in values
               if name in params and params[name] != defaults.get(name) and params[name] != values[name]]
    if clashes:
        raise ValueError(f"profile={profile!r} sets parameters you also gave: {'; '.join(clashes)}. Drop them, or "
                         "edit a copy of the profile's YAML file and pass its path as profile.")


def warn_if_gpu_profile_on_cpu(profile: str) -> None:
    """Warn when a profile sized for a GPU (any but ``"quick"``) will run on the CPU."""
    import warnings

    from sae_helpers.reproducibility import default_device

    if profile != "quick" and default_device().type == "cpu":
        warnings.warn(f"profile={profile!r} is sized for a GPU, but this run uses the CPU (no CUDA device, or "
                      "device='cpu'): expect many hours. In Colab: Runtime -> Change runtime type -> GPU, then "
                      "restart the notebook.", stacklevel=3)


def cache_dir(data_root: str | Path) -> Path:
    """Where the activation caches live: ``<data_root>/cache``."""
    return Path(data_root) / "cache"


def run_dir(data_root: str | Path, group: str, site: str) -> Path:
    """Where a chapter's SAEs at ``site`` are checkpointed: ``<data_root>/runs/<group>/<site>``."""
    return Path(data_root) / "runs" / group / site


def _naming_parameters(parameters: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """The parameters that name a results file: ``parameters`` or those in effect, ``data_root`` aside."""
    if parameters is None:
        if _in_effect is None:
            raise ValueError(f"results file {name!r}: no parameters. Call common.setup(globals(), ...) first (a "
                             "chapter's first cell does), or pass parameters={...}")
        parameters = _in_effect
    return {k: v for k, v in parameters.items() if k != "data_root"}


def results_file(data_root: str | Path, name: str, model_name: str, parameters: dict[str, Any] | None = None) -> Path:
    """``<data_root>/results/<name>_<model_name>-<hash>.csv``, its directory created: ``<hash>``
    covers ``parameters`` (default: those :func:`setup` put in effect), ``data_root`` aside."""
    shown = _naming_parameters(parameters, name)
    digest = hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()[:8]
    directory = Path(data_root) / "results"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}_{model_name}-{digest}.csv"


def write_results(table: pd.DataFrame, data_root: str | Path, name: str, model_name: str,
                  parameters: dict[str, Any] | None = None, *, index: bool = True) -> Path:
    """Write ``table`` atomically to :func:`results_file` and, beside it, the parameters that name
    it (``<same name>.parameters.json``); returns the CSV's path."""
    from sae_helpers._io import atomic_write, atomic_write_json

    path = results_file(data_root, name, model_name, parameters)
    atomic_write_json(path.with_suffix(".parameters.json"), _naming_parameters(parameters, name))
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=index))
    return path


def activation_caches(model_name: str, sites: list[str], n_train_tokens: int, n_eval_tokens: int,
                      data_root: str | Path, *, context_size: int, cache_dtype: str, outlier_factor: float,
                      dataset: Any = None, text_column: str = "text") -> tuple[Any, dict[str, Any]]:
    """Load the model (on the default device, set by :func:`setup`) and harvest (or reuse) the training
    and held-out caches of ``sites`` from ``dataset`` (``None``: the default text, set by :func:`setup`):
    ``(model, {site: (train_cache, eval_cache)})`` (:func:`~sae_helpers.harvest_splits`, one forward
    pass for all sites)."""
    from sae_helpers.data.text import as_text_source
    from sae_helpers.models import load_model
    from sae_helpers.models.harvesting import harvest_splits

    model = load_model(model_name)
    caches = harvest_splits(model, sites, n_train_tokens, n_eval_tokens, cache_dir(data_root),
                            context_size=context_size, dtype=cache_dtype, outlier_factor=outlier_factor,
                            dataset=as_text_source(dataset, text_column))
    return model, caches


def train_family(site: str, train_cache: Any, eval_cache: Any, widths: list[int], *, k: int, steps: int,
                 batch_size: int, lr: float, seed: int, data_root: str | Path, plateau_tolerance: float | None = None,
                 n_snapshots: int = 0, family_seed: int | None = None) -> Any:
    """The BatchTopK family shared by chapters 03 and 04: every width trained in one pass over
    ``train_cache`` (one init seed per width from ``family_seed``, default ``seed``; the data order of
    ``seed``), at constant learning rate until its plateau (``steps``: the cap), with ``n_snapshots``
    snapshots (:func:`snapshot_steps`), checkpointed in ``runs/family/<site>`` and evaluated on
    ``eval_cache``; the :func:`~sae_helpers.train_saes` result (``family_seed`` gives a control: the
    same widths from other initial weights, fed the same batches)."""
    from sae_helpers.training import family_configs, train_saes

    configs = family_configs(widths, seed=seed if family_seed is None else family_seed,
                             **family_settings(k, steps, batch_size, lr, plateau_tolerance))
    return train_saes(train_cache, configs, data_seed=seed, out_dir=run_dir(data_root, "family", site),
                      eval_activations=eval_cache, snapshots=snapshot_steps(steps, n_snapshots))


def published_saes(model: Any, site: str, names: list[str]) -> dict[int, Any]:
    """The published SAEs ``names`` by width (the ``published_saes`` parameter of chapters 03 and 04):
    each a hub name ``"hf://OWNER/REPO/PATH"`` or a folder in the SAELens layout
    (:func:`~sae_helpers.load_sae`), checked against ``model`` and ``site``, in order of strictly
    increasing width, at least two."""
    from sae_helpers import load_sae
    from sae_helpers.evaluation import check_sae_fits

    if isinstance(names, str) or len(names) < 2:
        raise ValueError(f"published_saes must be a list of at least two SAEs of one site in order of increasing "
                         f"width, got {names!r}; e.g. ['hf://OWNER/REPO/PATH_768', 'hf://OWNER/REPO/PATH_1536'].")
    saes: dict[int, Any] = {}
    for name in names:
        sae = load_sae(name, device=next(model.parameters()).device)
        try:
            check_sae_fits(model, sae, site)
        except ValueError as error:
            raise ValueError(f"published_saes: {name}: {error} (set model_name and site to the SAE's)") from None
        if saes and sae.d_sae <= max(saes):
            raise ValueError(f"published_saes: {name} has {sae.d_sae:,} latents, not more than the SAE before it "
                             f"({max(saes):,}): list the SAEs in order of increasing width, one per width.")
        saes[sae.d_sae] = sae
    return saes


def family_snapshots(data_root: str | Path, site: str, saes: list[Any]) -> list[dict[int, Any]]:
    """Each finished SAE of :func:`train_family` by step: its snapshots and itself at its last step."""
    from sae_helpers.training import run_snapshots

    return run_snapshots(run_dir(data_root, "family", site), [sae.training_config for sae in saes], saes)


def family_settings(k: int, steps: int, batch_size: int, lr: float,
                    plateau_tolerance: float | None = None) -> dict[str, Any]:
    """The family's training settings (BatchTopK with ``k``), the same for every width."""
    return dict(arch="batchtopk", k=k, steps=steps, batch_size=batch_size, lr=lr, **plateau_settings(plateau_tolerance))
