"""book/tools/runs.py and keynumbers.py: a grid of small notebooks executed with papermill."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from book.tools import runs
from tests.book.notebooks import write_notebook

PARAMETERS = 'seed = 0\nscale = 1.0\nfail = False\ndata_root = "../data"\n'
BODY = ("from pathlib import Path\n"
        "from sae_book import record\n"
        "assert not fail, 'planted failure'\n"
        "Path(data_root, 'results').mkdir(parents=True, exist_ok=True)\n"
        "Path(data_root, 'results', 'out.txt').write_text(str(seed))\n"
        "record.key_numbers({'value': seed * scale, 'passes': seed > 0, 'label': f's{seed}'})\n")


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    write_notebook(tmp_path / "notebooks" / "tiny.ipynb", PARAMETERS, BODY)
    (tmp_path / "book" / "params").mkdir(parents=True)
    (tmp_path / "book" / "params" / "tiny.yaml").write_text("scale: 10.0\n")
    (tmp_path / "book" / "grids").mkdir()
    return tmp_path


def _grid(repo: Path, text: str) -> Path:
    path = repo / "book" / "grids" / "g.yaml"
    path.write_text(text)
    return path


def test_grid_runs_records_and_table(repo):
    grid = _grid(repo, "chapters: [tiny]\nbase: book\ngrid:\n  seed: [1, 2, 3]\n")
    log: list[str] = []
    done, failed = runs.run_grid(grid, root=repo, log=log.append)
    assert not failed and len(done) == 3 and all(r.finished for r in done)
    batch = repo / "data" / "runs" / "batch" / "g"
    for run, seed in zip(done, (1, 2, 3), strict=True):
        assert run.directory.parent == batch / "tiny" and run.directory.name.startswith(f"seed-{seed}-")
        assert {p.name for p in run.directory.iterdir()} >= {"parameters.yaml", "environment.json", "tiny.ipynb",
                                                           "record.json", "finished.json"}
        assert json.loads((run.directory / "record.json").read_text())["key_numbers"]["value"] == seed * 10.0
        assert json.loads((run.directory / "environment.json").read_text())["parameters"]["seed"] == seed
        # each point writes into its own data root, whose cache is the shared one
        point_root = (repo / "notebooks" / run.params["data_root"]).resolve()
        assert point_root.parent == batch / "data_root"
        assert (point_root / "results" / "out.txt").read_text() == str(seed)
        assert (point_root / "cache").resolve() == (repo / "data" / "cache").resolve()
    table = pd.read_csv(batch / "key_numbers.csv")
    value = table.set_index("number").loc["value"]
    assert [value[f"seed {s}"] for s in (1, 2, 3)] == ["10.0", "20.0", "30.0"]
    assert value["n"] == 3 and value["mean"] == pytest.approx(20.0) and value["std"] == pytest.approx(10.0)
    assert (value["min"], value["max"]) == (10.0, 30.0)
    passes = table.set_index("number").loc["passes"]
    assert passes["mean"] == pytest.approx(1.0)
    label = table.set_index("number").loc["label"]
    assert label["n"] == 0 and pd.isna(label["mean"])
    assert "| tiny | value | 10 | 20 | 30 | 3 | 20 | 10 | 10 | 30 |" in (batch / "key_numbers.md").read_text()

    # a rerun skips every finished run
    log.clear()
    runs.run_grid(grid, root=repo, log=log.append)
    assert sum("finished, skipped" in line for line in log) == 3


def test_the_books_own_point_uses_the_books_data_root(repo):
    """Seed 0 with the book's parameters is the book's run: it reuses the book's data root (its
    trained SAEs); every other point, and every point of a quick grid, gets its own."""
    grid = _grid(repo, "chapters: [tiny]\nbase: book\ngrid:\n  seed: [0, 1]\n  scale: [10.0, 5.0]\n")
    done, failed = runs.run_grid(grid, root=repo, log=lambda _: None)
    assert not failed and len(done) == 4
    roots = {(r.params["seed"], r.params["scale"]): (repo / "notebooks" / r.params["data_root"]).resolve()
             for r in done}
    assert roots[(0, 10.0)] == (repo / "data").resolve()
    assert (repo / "data" / "results" / "out.txt").read_text() == "0"
    others = [roots[(0, 5.0)], roots[(1, 10.0)], roots[(1, 5.0)]]
    assert len(set(others)) == 3 and all(r.parent.name == "data_root" for r in others)
    quick = _grid(repo, "chapters: [tiny]\nbase: quick\ngrid:\n  seed: [0]\n")
    (run,) = runs.plan(runs.load_grid(quick), repo)
    assert (repo / "notebooks" / run.params["data_root"]).resolve().parent.name == "data_root"


def test_the_books_current_execution_is_copied_not_executed_again(repo):
    from book.tools.build import execute_chapter
    from book.tools.inputs import record_path
    from sae_helpers._io import sha256_file

    for name in ("requirements.txt", "pyproject.toml"):
        (repo / name).write_text("")
    chapters = repo / "book" / "chapters"
    execute_chapter(repo / "notebooks" / "tiny.ipynb", repo)  # what make book does
    grid = _grid(repo, "chapters: [tiny]\nbase: book\ngrid:\n  seed: [0, 1]\n")
    log: list[str] = []
    book_run, other = runs.run_grid(grid, root=repo, log=log.append)[0]
    assert "the book's own run, book/chapters/tiny.ipynb (current), copied" in log[0] and "executing" in log[1]
    marker = json.loads((book_run.directory / "finished.json").read_text())
    assert marker["adopted_from"].startswith("book/chapters/tiny.ipynb: make book's execution")
    assert "adopted_from" not in json.loads((other.directory / "finished.json").read_text())
    assert json.loads((book_run.directory / "record.json").read_text())["key_numbers"]["value"] == 0.0
    assert (book_run.directory / "parameters.yaml").is_file() and (book_run.directory / "environment.json").is_file()
    # a stale record (the inputs changed since make book), or --force: executed again
    good = record_path("tiny", repo).read_text()
    record_path("tiny", repo).write_text(good.replace(json.loads(good)["inputs"], "0" * 64))
    assert runs.book_execution(book_run, repo) is None
    record_path("tiny", repo).write_text(good)
    assert runs.book_execution(book_run, repo) == chapters / "tiny.ipynb"
    assert runs.book_execution(other, repo) is None  # another seed is never the book's run
    kept = (chapters / "tiny.ipynb").read_bytes()
    executed = json.loads(kept)
    executed["metadata"]["papermill"]["parameters"]["scale"] = 9.0  # executed with other parameters
    (chapters / "tiny.ipynb").write_text(json.dumps(executed))
    assert runs.book_execution(book_run, repo) is None  # not the notebook the record names
    record = json.loads(good)
    record["notebook_sha256"] = sha256_file(chapters / "tiny.ipynb")
    record_path("tiny", repo).write_text(json.dumps(record))
    assert runs.book_execution(book_run, repo) is None  # recorded, but with other parameters
    (chapters / "tiny.ipynb").write_bytes(kept)
    record_path("tiny", repo).write_text(good)
    log.clear()
    runs.run_grid(grid, root=repo, force=True, log=log.append)
    assert all("executing" in line for line in log[:2])
    assert "adopted_from" not in json.loads((book_run.directory / "finished.json").read_text())


def test_runs_finished_from_other_inputs_are_executed_again_or_kept_and_named(repo):
    grid = _grid(repo, "chapters: [tiny]\nbase: quick\ngrid:\n  seed: [1, 2]\n")
    first, _ = runs.run_grid(grid, root=repo, log=lambda _: None)
    log: list[str] = []
    runs.run_grid(grid, root=repo, log=log.append)
    assert all("finished, skipped" in line for line in log[:2])
    (repo / "sae_helpers").mkdir()
    (repo / "sae_helpers" / "changed.py").write_text("x = 1\n")  # the package changed since
    log.clear()
    runs.run_grid(grid, root=repo, keep_stale=True, log=log.append)
    assert all("other inputs than today's, kept" in line for line in log[:2]) and "(2 stale)" in log[-1]
    table = (runs.batch_dir(runs.load_grid(grid), repo) / "key_numbers.md").read_text()
    assert "**Stale**" in table and "tiny seed 1, tiny seed 2" in table
    log.clear()
    runs.run_grid(grid, root=repo, log=log.append)
    assert sum("other inputs than today's, executing again" in line for line in log) == 2 and "(0 stale)" in log[-1]
    assert "Stale" not in (runs.batch_dir(runs.load_grid(grid), repo) / "key_numbers.md").read_text()


def test_failed_run_keeps_its_copy_and_is_retried(repo):
    grid = _grid(repo, "chapters: [tiny]\nbase: quick\ngrid:\n  seed: [0, 1]\n  fail: [false, true]\n")
    done, failed = runs.run_grid(grid, root=repo, log=lambda _: None)
    assert len(done) == 4 and len(failed) == 2
    for run in failed:
        assert not run.finished and not run.notebook.exists()
        assert "planted failure" in run.failed_notebook.read_text()
    # the summarised axis is seed; fail is another axis: two rows per number, failed runs absent
    table = pd.read_csv(repo / "data" / "runs" / "batch" / "g" / "key_numbers.csv")
    assert set(table["fail"]) == {False}
    # fixed (planted failure removed): the failed runs run again, the finished ones are skipped
    write_notebook(repo / "notebooks" / "tiny.ipynb", PARAMETERS, BODY.replace("assert not fail", "assert True"))
    log: list[str] = []
    _, failed = runs.run_grid(grid, root=repo, keep_stale=True, log=log.append)  # the notebook changed
    assert not failed and sum("other inputs than today's, kept" in line for line in log) == 2
    assert sum("executing" in line for line in log) == 2
    assert all(not r.failed_notebook.exists() for r in done)


def test_unknown_parameter_is_refused(repo):
    grid = _grid(repo, "chapters: [tiny]\ngrid:\n  sead: [0, 1]\n")
    with pytest.raises(ValueError, match=r"g.yaml: set/grid: \['sead'\] is not a parameter of \['tiny'\]"):
        runs.plan(runs.load_grid(grid), repo)
    grid = _grid(repo, "chapters: [nope]\ngrid:\n  seed: [0]\n")
    with pytest.raises(ValueError, match="g.yaml: chapters: no notebook"):
        runs.plan(runs.load_grid(grid), repo)


def test_summary_without_runs_or_with_missing_values():
    from book.tools import keynumbers
    empty = pd.DataFrame(columns=["chapter", "seed", "number", "value"])
    table = keynumbers.summarise(empty, "seed", [0, 1])
    assert table.empty and list(table.columns) == ["chapter", "number", "seed 0", "seed 1", *keynumbers.STATS]
    long = pd.DataFrame({"chapter": "c", "seed": [0, 1, 2], "number": "x", "value": [1.0, None, 3]})
    row = keynumbers.summarise(long, "seed", [0, 1, 2]).iloc[0]
    assert row["n"] == 2 and row["mean"] == 2.0 and row["min"] == 1.0 and row["max"] == 3.0
    assert "| c | x | 1 |  | 3 | 2 | 2 | 1.414 | 1 | 3 |" in keynumbers.to_markdown(keynumbers.summarise(long, "seed"))


def test_effects_are_each_number_minus_its_null_run_by_run():
    from book.tools import keynumbers
    long = pd.DataFrame({"chapter": "c", "seed": [0, 0, 0, 1, 1, 1, 2, 2],
                         "number": ["ratio", "novel", "control"] * 2 + ["ratio", "novel"],
                         "value": [1.5, 0.10, 0.01, 0.8, 0.12, 0.02, 1.1, 0.09]})
    table = keynumbers.effects(long, {"c": {"ratio": 1, "novel": "control", "absent": 0}}, "seed", [0, 1, 2])
    rows = table.set_index("number")
    assert list(rows.index) == ["ratio − 1", "novel − control"]
    ratio, novel = rows.loc["ratio − 1"], rows.loc["novel − control"]
    assert [ratio[f"seed {s}"] for s in (0, 1, 2)] == pytest.approx([0.5, -0.2, 0.1])
    assert not ratio["same sign"]  # the spread crosses the null: the sign is not settled
    assert ratio["|mean| / std"] == pytest.approx(abs(0.4 / 3) / pd.Series([0.5, -0.2, 0.1]).std())
    # seed 2 recorded no control: that run is left out, the other two agree in sign
    assert novel["n"] == 2 and pd.isna(novel["seed 2"]) and novel["same sign"]
    assert novel["mean"] == pytest.approx(0.095)
    # one run cannot show a sign is settled
    single = keynumbers.effects(long[long["seed"] == 0], {"c": {"ratio": 1}}, "seed", [0])
    assert not single.iloc[0]["same sign"] and pd.isna(single.iloc[0]["|mean| / std"])
    assert keynumbers.effects(long, {}, "seed").empty
    assert "| same sign | \\|mean\\| / std |" in keynumbers.to_markdown(table)  # a pipe in a header is escaped


def test_grid_with_nulls_writes_the_effects_table(repo):
    grid = _grid(repo, "chapters: [tiny]\nbase: book\ngrid:\n  seed: [1, 2]\nnulls:\n  tiny: {value: 15}\n")
    runs.run_grid(grid, root=repo, log=lambda _: None)
    batch = repo / "data" / "runs" / "batch" / "g"
    effect = pd.read_csv(batch / "effects.csv").set_index("number").loc["value − 15"]
    assert (effect["seed 1"], effect["seed 2"], bool(effect["same sign"])) == (-5.0, 5.0, False)
    markdown = (batch / "key_numbers.md").read_text()
    assert "Effects: each key number minus its null" in markdown and "| tiny | value − 15 | -5 | 5 |" in markdown
