import sys
import types

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
    path = common.results_file(tmp_path, "02_shrinkage", "smollm2-135m")
    assert path == tmp_path / "results" / "02_shrinkage_smollm2-135m.csv" and path.parent.is_dir()


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
