"""Classify text: tokenising, the vocabulary, column detection and errors, the bundled word_languages set, and
``grukit classify train | val | predict | export`` end to end on a small word-level CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import grukit
from grukit.errors import DataError
from grukit.tasks.classify.export import onnx_model
from grukit.tasks.classify.inputs import detect_input
from grukit.tasks.classify.model import SequenceClassifier
from grukit.tasks.classify.text import TokenClassifier, build_vocab, encode, load_texts, token_lists, tokenize
from grukit.workflow.config import resolve
from tests.workflow.forecast_files import grukit as run_cli

TOPICS = {
    "sport": ["goal", "match", "team", "coach", "score", "league"],
    "food": ["bread", "soup", "cheese", "recipe", "oven", "salad"],
}
FILLER = ["the", "a", "was", "today", "very", "new", "and", "with"]


def write_texts(path: Path, per_class: int = 30, topics: dict[str, list[str]] = TOPICS, seed: int = 0) -> Path:
    """CSV id,text,label: each text 4-9 filler words and two or three words of its topic."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label"])
        for label, words in topics.items():
            for i in range(per_class):
                chosen = [*rng.choice(FILLER, int(rng.integers(4, 10))), *rng.choice(words, int(rng.integers(2, 4)))]
                writer.writerow([f"{label}{i}", " ".join(rng.permutation(chosen)).capitalize() + ".", label])
    return path


def _csv(tmp_path: Path, text: str) -> str:
    path = tmp_path / "t.csv"
    path.write_text(text)
    return str(path)


def test_tokens_vocabulary_and_encoding(tmp_path):
    assert tokenize("Hi, Bob!", "word", True) == ["hi", ",", "bob", "!"]
    assert tokenize("Ab c", "char", False) == ["A", "b", " ", "c"]
    texts = load_texts(_csv(tmp_path, "text,label\naa b,x\nb c c,y\nzz,x\n"))
    lists = token_lists(texts, "word", True)
    vocab = build_vocab(lists[:2], min_count=1)
    assert vocab == ["<pad>", "<unk>", "b", "c", "aa"]  # most frequent first, ties alphabetical
    assert build_vocab(lists[:2], min_count=2) == ["<pad>", "<unk>", "b", "c"]
    encoded = encode(texts, lists, vocab, max_length=2)
    assert encoded.lengths.tolist() == [2, 2, 1] and encoded.truncated == 1
    tokens, lengths = encoded.padded(np.array([2, 0]))
    assert tokens.tolist() == [[1, 0], [4, 2]] and lengths.tolist() == [1, 2]  # zz is <unk>; padding 0


def test_columns_are_found_and_ids_default_to_lines(tmp_path):
    texts = load_texts(_csv(tmp_path, "word,lang,split\nhello,en,train\nbonjour,fr,test\n"))
    assert (texts.text_name, texts.label_name) == ("word", "lang")  # label: last column but split
    assert texts.ids == ["2", "3"] and list(texts.split) == ["train", "test"]
    texts = load_texts(_csv(tmp_path, "id,label,note,text\n7,a,x,long text here\n8,b,y,more\n"))
    assert (texts.text_name, texts.label_name, texts.ids) == ("text", "label", ["7", "8"])


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("text,label\nhello,a\n,b\n", {}, "t.csv line 3, column 'text': empty text; fill it or drop the row"),
        ("text,label\nhello,a\n", {"label": "lable"}, "no label column 'lable' (did you mean 'label'?)"),
        ("text,label,split\nhello,a,dev\n", {}, "t.csv line 2, column 'split': 'dev' is not train or test"),
        ("text\nhello\n", {}, "text classification needs a text and a label column"),
    ],
)
def test_bad_text_data_is_one_clear_error(tmp_path, text, kwargs, message):
    with pytest.raises(DataError) as caught:
        load_texts(_csv(tmp_path, text), **kwargs)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_input_kind_is_detected(tmp_path):
    def kind(data: str, **keys: object) -> str:
        return detect_input(resolve({"task": "classify", "data": data, **keys}))

    texts = write_texts(tmp_path / "texts.csv", per_class=2)
    numeric = _csv(tmp_path, "seq,step,a,label\ns1,0,0.5,x\ns1,1,0.7,x\n")
    assert kind(str(texts)) == "text" and kind(numeric) == "numeric" and kind(str(tmp_path)) == "audio"
    assert kind(numeric, text="a") == "text" and kind(str(texts), input="numeric") == "numeric"
    assert kind("word_languages") == "text" and kind("auto") == kind("japanese_vowels") == "numeric"


def test_bundled_word_languages():
    texts = load_texts("word_languages")
    assert (texts.text_name, texts.label_name) == ("word", "language") and len(texts.ids) == 10_000
    assert sorted(set(texts.labels)) == ["english", "french", "german", "italian", "spanish"]
    assert (texts.split == "test").sum() == 2000 and len(set(texts.texts)) == 10_000


@pytest.mark.parametrize(("pool", "embedded"), [("mean", True), ("last", False)])
def test_onnx_export_matches_pytorch(tmp_path, pool, embedded):
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = SequenceClassifier(6, 3, hidden=5, layers=2, bidirectional=True, pool=pool)
    lengths = torch.tensor([4, 1, 3])
    x = torch.randint(1, 20, (3, 4)) * (torch.arange(4) < lengths[:, None]) if embedded else torch.randn(4, 3, 6)
    net = TokenClassifier(20, 6, net) if embedded else net
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_model(net.eval()).SerializeToString())
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy(), "lengths": lengths.numpy()})
    with torch.no_grad():
        assert np.abs(got - net(x, lengths).numpy()).max() < 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    data = write_texts(folder / "texts.csv")
    args = ["tokens=word", "epochs=8", "hidden=16", "embed=8", "batch=8", "lr=0.02", "plots=false"]
    return folder, data, run_cli("classify", "train", f"data={data}", *args, cwd=folder)


def test_train_val_predict_export(trained, capsys, monkeypatch):
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")  # as the command-line runs: no kernel build here
    folder, _, result = trained
    assert result.returncode == 0, result.stderr
    assert "60 texts ('text'), word tokens, vocabulary 23" in result.stderr  # 8 filler + 12 topic words, "."
    run = folder / "runs" / "classify" / "train"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == ["food", "sport"] and metrics["sequences"]["test"] == 12
    assert metrics["test"]["model"]["accuracy"] > metrics["test"]["majority"]["accuracy"]
    config = json.loads((run / "config.json").read_text())
    assert (config["input"], config["text"], config["label"], config["id"]) == ("text", "text", "label", "id")

    model = grukit.Model.load(run)
    model.cfg.update(verbose=False, project=str(folder / "runs"))
    again = model.val()
    assert again["test"]["model"] == metrics["test"]["model"]
    new = folder / "new.csv"
    new.write_text("id,text,label\nq1,Zebra quokka goal match team,\nq2,A soup with cheese and bread,\n")
    model.predict(str(new))  # unknown words (zebra, quokka) map to <unk>
    with open(model.output_dir / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["id"], r["predicted"]) for r in rows] == [("q1", "sport"), ("q2", "food")]
    assert model.export(format="torchscript") == run / "weights" / "best.torchscript.pt"
    model.cfg["verbose"] = True
    capsys.readouterr()
    assert model.export(format="onnx") == run / "weights" / "best.onnx"
    printed = capsys.readouterr().out
    assert "onnxruntime vs PyTorch on 60 real texts" in printed
    assert float(printed.rsplit("max abs diff ", 1)[1]) < 1e-4

    other = write_texts(folder / "other.csv", per_class=2, topics={"sport": TOPICS["sport"], "music": ["song"]})
    with pytest.raises(DataError, match="label 'music' was not seen in training; the model knows food, sport"):
        model.val(str(other))
