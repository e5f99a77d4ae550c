import json
import re
import sys
import types

import pandas as pd
import pytest

import sae_helpers as sh
from sae_helpers.chapters import common


def test_parameters_are_the_plain_values_in_definition_order():
    namespace = {"In": [], "Out": {}, "_ih": [], "__name__": "__main__", "get_ipython": print, "np": types,
                 "d": 32, "sites": ["a", "b"], "threshold": None, "lr": 1e-3, "name": "x", "Path": object,
                 "f": lambda: 0}
    assert common.parameters(namespace) == {"d": 32, "sites": ["a", "b"], "threshold": None, "lr": 1e-3, "name": "x"}


def test_setup_returns_the_environment_and_the_parameters():
    table = common.setup({"seed": 3, "steps": 10})
    assert table.loc["parameters", "value"] == {"seed": 3, "steps": 10}
    assert table.loc["sae_helpers", "value"] == sh.__version__


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
