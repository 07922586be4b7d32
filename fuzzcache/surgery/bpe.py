"""A byte-level BPE tokenizer trained in-process (``tokenizers``) on text shipped with fuzzcache,
and the boundary check the text-level surgery operations run.

tokenize(prefix + doc) is often not tokenize(prefix) + tokenize(doc): a merge can cross the
boundary ("an" + "electric"), or a space at the end of the prefix joins the document's first
word (GPT-2 style "Ġword"). Cutting a cache at len(tokenize(prefix)) is then wrong, so
``split_text`` raises ``BoundarySplit`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

from fuzzcache.surgery.models import VOCAB

BOS = "<s>"
TRAIN_TEXT = "train.txt"  # fuzzcache/surgery/data/, package data


class BoundarySplit(ValueError):
    """tokenize(prefix + doc) != tokenize(prefix) + tokenize(doc): the cut point between them does not exist."""

    def __init__(self, prefix: str, doc: str, joined: list[int], separate: list[int]):
        super().__init__(f"BPE boundary split: tokenize({prefix!r} + {doc!r}) = {joined} but tokenize(prefix) + tokenize(doc) = {separate}; "
                         "the prefix cannot be cut off at a token boundary (tokenize the two parts separately)")
        self.prefix, self.doc, self.joined, self.separate = prefix, doc, joined, separate


def training_text() -> str:
    return files("fuzzcache.surgery").joinpath("data").joinpath(TRAIN_TEXT).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def tokenizer():
    """The byte-level BPE tokenizer (vocab ``VOCAB``, id 0 = ``<s>``), trained once per process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[BOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_text().splitlines(), trainer=trainer)
    return tok


def encode(tok, text: str) -> list[int]:
    """Token ids of ``text``, no special tokens."""
    return tok.encode(text, add_special_tokens=False).ids


@dataclass(frozen=True)
class TextSplit:
    prefix: tuple[int, ...]
    doc: tuple[int, ...]


def split_text(tok, prefix: str, doc: str) -> TextSplit:
    """The ids of prefix and doc such that prefix + doc is tokenize(prefix + doc); BoundarySplit when no such cut exists."""
    joined, p, d = encode(tok, prefix + doc), encode(tok, prefix), encode(tok, doc)
    if joined != p + d:
        raise BoundarySplit(prefix, doc, joined, p + d)
    return TextSplit(tuple(p), tuple(d))


def has_boundary_split(tok, prefix: str, doc: str) -> bool:
    return encode(tok, prefix + doc) != encode(tok, prefix) + encode(tok, doc)
