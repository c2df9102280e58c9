"""Classify text: a table with one text and one label per row (a CSV file or a bundled dataset), tokenised at the
character or word level and encoded with a vocabulary built on the training texts.

Columns: the text (``text``; auto: a column named "text", else the text-like column with the longest values),
the class (``label``; auto: a column named "label", else the last column other than the text and split), an
optional id (``id``; auto: a column named "id", else the row's line number) and optionally ``split`` (train or
test). Token id 0 is padding, 1 is ``<unk>`` (a token not in the vocabulary). Every problem is a one-line
``DataError`` naming the file, column and line, and the fix.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from grukit.errors import DataError
from grukit.tasks.forecast.data import Table, looks_numeric, read_table, require_column

PAD, UNK = "<pad>", "<unk>"
SPLIT = "split"
_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class Texts:
    """Checked texts: ids (S,), texts (S,) strings, labels (S,) strings ("" when unlabelled), split (S,) strings
    ("" when none). ``label`` names the data in messages."""

    label: str
    text_name: str
    label_name: str
    id_name: str  # "" when ids are line numbers
    ids: list[str]
    texts: np.ndarray
    labels: np.ndarray
    split: np.ndarray


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([str(v).strip() for v in values], dtype=object)


def _auto_text_column(table: Table, exclude: set[str]) -> str:
    """The column named "text", else the non-numeric column (not in ``exclude``) with the longest mean length."""
    if "text" in table.columns and "text" not in exclude:
        return "text"
    candidates = [n for n, v in table.columns.items() if n not in exclude and not looks_numeric(v)]
    if not candidates:
        raise DataError(f"{table.label}: no text column (every column is numeric or taken); set text=COLUMN")
    return max(candidates, key=lambda n: np.mean([len(str(v)) for v in table.columns[n]]))


def load_texts(
    data: str, text: str = "auto", label: str = "auto", id_name: str = "auto", unlabelled: bool = False
) -> Texts:
    """Read and check the table ``data`` (bundled name or CSV path); see the module docstring. ``unlabelled``:
    a missing label column is allowed (every label ""), as for new texts given to a trained model."""
    table = read_table(data)
    names = list(table.columns)
    if len(names) < 2 and not unlabelled:
        raise DataError(f"{table.label} has {len(names)} column; text classification needs a text and a label column")
    if id_name == "auto":
        id_name = "id" if "id" in names else ""
    if label == "auto":
        others = [n for n in names if n not in (SPLIT, text, id_name)]
        if not others:
            raise DataError(f"{table.label}: no label column besides the text, id and split; set label=COLUMN")
        label = "label" if "label" in names else others[-1]
    if text == "auto":
        text = _auto_text_column(table, {label, SPLIT, id_name})
    has_label = label in table.columns or not unlabelled
    required = [(text, "text"), *([(label, "label")] if has_label else []), *([(id_name, "id")] if id_name else [])]
    for name, role in required:
        require_column(table, name, role)
    roles = [name for name in (text, label, id_name) if name]
    if len(set(roles)) < len(roles) or SPLIT in roles:
        raise DataError(f"{table.label}: the text, label, id and split columns must differ; give each its own column")
    texts = _strings(table.columns[text])
    empty = np.flatnonzero(texts == "")
    if len(empty):
        raise DataError(f"{table.where(int(empty[0]), text)}: empty text; fill it or drop the row")
    split = _strings(table.columns[SPLIT]) if SPLIT in table.columns else np.full(len(texts), "", dtype=object)
    bad = np.flatnonzero(~np.isin(split, ["", "train", "test"]))
    if len(bad):
        raise DataError(f"{table.where(int(bad[0]), SPLIT)}: {split[bad[0]]!r} is not train or test")
    if id_name:
        ids = [str(v) for v in _strings(table.columns[id_name])]
    else:
        ids = [str(row + table.first_line) for row in range(len(texts))]
    labels = _strings(table.columns[label]) if has_label else np.full(len(texts), "", dtype=object)
    return Texts(table.label, text, label, id_name, ids, texts, labels, split)


def tokenize(text: str, tokens: str, lowercase: bool) -> list[str]:
    """The tokens of ``text``: its characters (tokens="char") or its words and punctuation marks ("word")."""
    text = text.lower() if lowercase else text
    return list(text) if tokens == "char" else _WORD.findall(text)


def build_vocab(token_lists: list[list[str]], min_count: int) -> list[str]:
    """[<pad>, <unk>, tokens seen at least ``min_count`` times, most frequent first (ties: alphabetical)]."""
    counts = Counter(token for tokens in token_lists for token in tokens)
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return [PAD, UNK, *kept]


@dataclass
class TokenSequences:
    """Encoded texts with their ids, labels and split: tokens (N,) int64 token ids of every text in turn;
    offsets (S + 1,); ``truncated`` counts the texts cut to ``max_length`` tokens."""

    label: str
    ids: list[str]
    labels: np.ndarray
    split: np.ndarray
    tokens: np.ndarray
    offsets: np.ndarray
    truncated: int

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Texts ``index`` (B,) as (B, T) int64 token ids padded with 0, and lengths (B,) int64."""
        lengths = self.lengths[index]
        out = np.zeros((len(index), int(lengths.max())), dtype=np.int64)
        for b, s in enumerate(index):
            out[b, : lengths[b]] = self.tokens[self.offsets[s] : self.offsets[s + 1]]
        return out, lengths.astype(np.int64)


def encode(texts: Texts, token_lists: list[list[str]], vocab: list[str], max_length: int) -> TokenSequences:
    """``token_lists`` (one per text) as token ids of ``vocab`` (unknown tokens: 1), each cut to its first
    ``max_length`` tokens (0: no limit). A text without tokens is a DataError naming its id."""
    lookup = {token: i for i, token in enumerate(vocab)}
    limit = max_length or None
    encoded = [[lookup.get(token, 1) for token in tokens[:limit]] for tokens in token_lists]
    for i, ids in enumerate(encoded):
        if not ids:
            raise DataError(
                f"{texts.label}: text {texts.ids[i]!r} ({texts.text_name}) has no tokens; give it words or characters"
            )
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    return TokenSequences(
        label=texts.label,
        ids=texts.ids,
        labels=texts.labels,
        split=texts.split,
        tokens=np.fromiter((t for ids in encoded for t in ids), dtype=np.int64, count=int(lengths.sum())),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        truncated=sum(len(t) > len(e) for t, e in zip(token_lists, encoded, strict=True)),
    )


class TokenClassifier(nn.Module):
    """An embedding in front of a sequence classifier: tokens (B, T) int64, lengths (B,) -> logits (B, C).
    ``classifier`` maps (T, B, E) embeddings and lengths to logits; padding (id 0) embeds to zeros. Tokens are
    batch-first, as the export check expects of 2-d inputs."""

    def __init__(self, vocab: int, embed: int, classifier: nn.Module) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed, padding_idx=0)
        self.classifier = classifier

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        return self.classifier(self.embedding(tokens).transpose(0, 1), lengths)


def token_lists(texts: Texts, tokens: str, lowercase: bool) -> list[list[str]]:
    """The tokens of every text."""
    return [tokenize(str(t), tokens, lowercase) for t in texts.texts]
