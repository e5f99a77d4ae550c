"""The chapter record round-trips through a real kernel and reads as myst-nb reads glue."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from sae_book import record


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import numpy as np\n"
        "from sae_book import record\n"
        "record.headline('Gated SAEs shrink **less**: 0.97 against 0.80.')\n"
        "record.key_numbers({'gamma_gated': np.float32(0.97), 'n': 3, 'nan': float('nan'), 'arch': 'gated'})\n")]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    path = tmp_path_factory.mktemp("record") / "chapter.ipynb"
    nbformat.write(nb, path)
    return path


def test_the_record_reads_back(executed):
    got = record.read_record(executed)
    assert got.headline == "Gated SAEs shrink **less**: 0.97 against 0.80."
    assert got.key_numbers == {"gamma_gated": pytest.approx(0.97), "n": 3, "nan": None, "arch": "gated"}


def test_the_outputs_are_hidden_glue_as_myst_nb_extracts_it(executed):
    myst_glue = pytest.importorskip("myst_nb.ext.glue")
    cell = nbformat.read(executed, as_version=4).cells[0]
    names = dict(myst_glue.extract_glue_data_cell(cell))
    assert set(names) == {record.HEADLINE, record.KEY_NUMBERS}
    assert names[record.HEADLINE]["data"]["text/markdown"].startswith("Gated SAEs")
    assert all(output["output_type"] == "display_data" and
               all(mime.startswith(record.GLUE_PREFIX) for mime in output["data"]) for output in cell.outputs)


def test_a_notebook_without_a_record(tmp_path):
    path = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), path)
    assert record.read_record(path) == record.Record(None, {})


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        record.headline("  ")
    with pytest.raises(TypeError, match="'table'"):
        record.key_numbers({"table": [1, 2]})
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.ipynb"):
        record.read_record(broken)
