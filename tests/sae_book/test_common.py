import json
import re
import sys
import types

import pandas as pd
import pytest

import sae_helpers as sh
from sae_book import common


def test_parameters_are_the_plain_values_in_definition_order():
    namespace = {"In": [], "Out": {}, "_ih": [], "__name__": "__main__", "get_ipython": print, "np": types,
                 "d": 32, "sites": ["a", "b"], "threshold": None, "lr": 1e-3, "name": "x", "Path": object,
                 "f": lambda: 0}
    assert common.parameters(namespace) == {"d": 32, "sites": ["a", "b"], "threshold": None, "lr": 1e-3, "name": "x"}


def test_setup_returns_the_environment_and_the_parameters():
    table = common.setup({"seed": 3, "steps": 10})
    assert table.xs("parameter")["value"].to_dict() == {"seed": "3", "steps": "10"}
    assert table.loc[("environment", "sae_helpers"), "value"] == sh.__version__


def test_paths_follow_the_convention(tmp_path):
    assert common.cache_dir(tmp_path) == tmp_path / "cache"
    assert common.run_dir(tmp_path, "family", "blocks.6.hook_resid_post") == tmp_path / "runs" / "family" / (
        "blocks.6.hook_resid_post")
    path = common.results_file(tmp_path, "02_shrinkage", "smollm2-135m", {"seed": 0, "data_root": str(tmp_path)})
    assert path.parent == tmp_path / "results" and path.parent.is_dir()
    assert re.fullmatch(r"02_shrinkage_smollm2-135m-[0-9a-f]{8}\.csv", path.name)


def test_results_are_named_by_their_parameters_and_never_overwrite_another_runs(tmp_path, monkeypatch):
    """The book's tables and make test's quick ones (other parameters) land in different files;
    the same parameters elsewhere (another data_root) get the same name; each file says what made it."""
    monkeypatch.setattr(common, "_in_effect", None)
    with pytest.raises(ValueError, match="no parameters. Call common.setup"):
        common.results_file(tmp_path, "02_shrinkage", "m")
    common.setup({"seed": 0, "steps": 2000, "data_root": str(tmp_path)})
    book_path = common.write_results(pd.DataFrame({"a": [1]}), tmp_path, "02_shrinkage", "m", index=False)
    quick = {"seed": 0, "steps": 200}
    quick_path = common.write_results(pd.DataFrame({"a": [2]}), tmp_path, "02_shrinkage", "m", quick, index=False)
    assert book_path != quick_path
    assert pd.read_csv(book_path)["a"].tolist() == [1] and pd.read_csv(quick_path)["a"].tolist() == [2]
    assert json.loads(book_path.with_suffix(".parameters.json").read_text()) == {"seed": 0, "steps": 2000}
    assert json.loads(quick_path.with_suffix(".parameters.json").read_text()) == {"seed": 0, "steps": 200}
    moved = {"seed": 0, "steps": 2000, "data_root": "x"}
    elsewhere = common.results_file(tmp_path / "other", "02_shrinkage", "m", moved)
    assert elsewhere.name == book_path.name
    assert sorted(p.name for p in (tmp_path / "results").iterdir() if p.name.startswith(".")) == []  # no temp files


def test_in_colab_the_default_data_root_moves_into_the_file_browser(monkeypatch):
    namespace = {"seed": 0, "data_root": common.DEFAULT_DATA_ROOT}
    common.setup(namespace)
    assert namespace["data_root"] == "../data"  # not in Colab: unchanged
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    table = common.setup(namespace)
    assert namespace["data_root"] == common.COLAB_DATA_ROOT == "/content/data"
    assert common.COLAB_DATA_ROOT in table.to_string()
    chosen = {"seed": 0, "data_root": "/content/drive/MyDrive/sae"}
    common.setup(chosen)
    assert chosen["data_root"] == "/content/drive/MyDrive/sae"  # a chosen folder is kept


def test_snapshot_steps_halve_back_from_the_cap():
    assert common.snapshot_steps(2400, 3) == [300, 600, 1200]
    assert common.snapshot_steps(200, 3) == [25, 50, 100]
    assert common.snapshot_steps(5, 4) == [1, 2, 4]
    assert common.snapshot_steps(100, 0) == []


def test_trend_table_and_text_say_which_numbers_still_move():
    trends = {"l0": pd.DataFrame([{"name": "relu", "previous_tokens": 1000, "tokens": 2000, "previous": 20.0,
                                   "last": 18.0, "change": -0.1}]),
              "fvu": pd.DataFrame([{"name": "relu", "previous_tokens": 1000, "tokens": 2000, "previous": 0.1,
                                    "last": 0.101, "change": 0.01}])}
    table = common.trend_display(trends, {"l0": "L0", "fvu": "FVU"})
    assert table.loc[("relu", "L0"), "change %"] == -10.0 and table.loc[("relu", "FVU"), "last"] == 0.101
    text = common.render_trend(trends, {"l0": "L0", "fvu": "FVU"}, 2000, 0.02)
    assert "L0 of `relu` (down 10.0%)" in text and "FVU of `relu`" not in text
    assert "600,000 times fewer" in text
    assert "every number changed by at most 20%" in common.render_trend(trends, {}, 2000, 0.2)


def _notebook(folder, source):
    cell = {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": source, "outputs": [],
            "execution_count": None}
    (folder / "ch.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4,
                                                 "nbformat_minor": 5}))


PARAMETERS_CELL = """profile = "quick"
steps = 200       # the cap
lr = 1e-3
l1_relu = [1.0, 4.0]
meta_width = None
seed = 0
"""


def test_notebook_defaults_read_the_parameters_cell(tmp_path):
    _notebook(tmp_path, PARAMETERS_CELL)
    assert common.notebook_defaults("ch", tmp_path) == {"profile": "quick", "steps": 200, "lr": 1e-3,
                                                         "l1_relu": [1.0, 4.0], "meta_width": None, "seed": 0}
    assert common.notebook_defaults("missing", tmp_path) is None


@pytest.mark.parametrize(("given", "message"), [
    ({"stepz": 5}, "'stepz' (did you mean 'steps'?)"),
    ({"l1_relu": "[2.0]"}, "papermill -y 'l1_relu: [2.0]'"),
    ({"steps": 5.5}, "steps=5.5 (float), the default is 200 (int)"),
    ({"steps": 0}, "steps=0 must be > 0"),
    ({"lr": "3e-4"}, "lr='3e-4' (str)"),
    ({"l1_relu": [1.0, -2.0]}, "every element must be > 0"),
])
def test_bad_parameters_are_refused_before_any_work(tmp_path, given, message):
    _notebook(tmp_path, PARAMETERS_CELL)
    defaults = common.notebook_defaults("ch", tmp_path)
    params = {**defaults, **given}
    with pytest.raises(ValueError) as error:
        common.check_parameters(params, defaults, "ch")
    assert message in str(error.value)


def test_good_parameters_pass(tmp_path):
    _notebook(tmp_path, PARAMETERS_CELL)
    defaults = common.notebook_defaults("ch", tmp_path)
    common.check_parameters({**defaults, "steps": 5, "lr": 1, "l1_relu": [2], "meta_width": 216, "seed": 3}, defaults,
                            "ch")


def test_setup_checks_the_parameters_against_the_notebook_in_the_working_directory(tmp_path, monkeypatch):
    _notebook(tmp_path, PARAMETERS_CELL)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        common.setup({"profile": "quick", "stepz": 5, "steps": 200, "lr": 1e-3, "l1_relu": [1.0], "meta_width": None,
                      "seed": 0}, "ch")


def test_a_value_the_profile_would_replace_is_refused():
    defaults = common.notebook_defaults("01_training", sh_notebooks())
    gpu = __import__("sae_book.profiles", fromlist=["load_profile"]).load_profile("gpu", "01_training")
    name = next(key for key in gpu if isinstance(defaults.get(key), int) and not isinstance(defaults[key], bool))
    params = {**defaults, "profile": "gpu", name: gpu[name] + 1}
    with pytest.raises(ValueError, match=f"profile='gpu' sets parameters you also gave: {name}="):
        common.check_profile_overrides(params, defaults, "01_training")
    common.check_profile_overrides({**defaults, "profile": "gpu"}, defaults, "01_training")  # defaults: fine


def sh_notebooks():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("notebook", sorted(p.stem for p in sh_notebooks().glob("*.ipynb")))
def test_the_books_parameters_and_profiles_fit_every_notebook(notebook):
    import yaml

    from sae_book.profiles import load_profile

    defaults = common.notebook_defaults(notebook, sh_notebooks())
    params_file = sh_notebooks().parent / "book" / "params" / f"{notebook}.yaml"
    book = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}
    common.check_parameters({**defaults, **book}, defaults, notebook)
    common.check_parameters({**defaults, **load_profile("gpu", notebook)}, defaults, notebook)


def test_the_parameters_table_has_a_row_per_parameter_with_its_whole_value():
    params = {"steps": 32000, "l1_gated": [1.0, 1.4, 2.0, 2.8, 4.0, 5.6], "dataset": "sotu", "data_root": "../data"}
    table = common.parameters_table(params)
    shown = table.xs("parameter")["value"].to_dict()
    assert shown == {"steps": "32000", "l1_gated": "[1.0, 1.4, 2.0, 2.8, 4.0, 5.6]", "dataset": "sotu",
                     "data_root": "../data"}
    assert {"sae_helpers", "torch", "device"} <= set(table.xs("environment").index)


def test_a_relative_data_root_is_read_from_the_notebooks_folder_whatever_the_working_directory(tmp_path,
                                                                                                  monkeypatch):
    from pathlib import Path

    repository = Path(common.__file__).resolve().parents[2]
    monkeypatch.chdir(repository)  # papermill run from the repository root, without --cwd notebooks
    namespace = {"seed": 0, "data_root": "../data"}
    common.setup(namespace, "01_training")
    assert Path(namespace["data_root"]) == repository / "data"
    monkeypatch.chdir(repository / "notebooks")  # the usual case: left as it is
    namespace = {"seed": 0, "data_root": "../data"}
    common.setup(namespace, "01_training")
    assert namespace["data_root"] == "../data"
    monkeypatch.chdir(tmp_path)  # no such notebook anywhere near (Colab, an installed package): left as it is
    assert common.notebook_folder("no_such_chapter") == tmp_path


def test_a_gpu_profile_on_the_cpu_warns(monkeypatch):
    import warnings

    from sae_helpers import reproducibility

    monkeypatch.setattr(reproducibility.torch.cuda, "is_available", lambda: False)
    reproducibility.set_default_device("auto")
    with pytest.warns(UserWarning, match="profile='gpu' is sized for a GPU, but this run uses the CPU"):
        common.warn_if_gpu_profile_on_cpu("gpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        common.warn_if_gpu_profile_on_cpu("quick")
