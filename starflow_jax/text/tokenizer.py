"""Tokenizers of the built-in text encoder: word-level (a fixed vocabulary) and byte-level.

Every sequence starts with <bos> and is padded with <pad> (id 0) or truncated to `max_length`,
so the empty prompt (the null condition of classifier-free guidance) is [<bos>, <pad>, ...].
Task tags of the official code ("(extend)", "(v2v)") are single reserved tokens.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from starflow_jax.errors import UserError

PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"
TAGS = ("(extend)", "(v2v)", "(last)")
SPECIAL_TOKENS = (PAD, BOS, UNK) + TAGS
_WORD = re.compile(r"\([a-z0-9]+\)|[a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """kind 'words' (ids from `vocabulary`) or 'bytes' (UTF-8 bytes); fixed `max_length`."""

  kind: str = "words"
  vocabulary: tuple[str, ...] = ()
  max_length: int = 16

  def __post_init__(self):
    object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
    if self.kind not in ("words", "bytes"):
      raise UserError(f"tokenizer kind {self.kind!r} must be 'words' or 'bytes'")
    if self.max_length < 2:
      raise UserError(f"max_length={self.max_length} must be >= 2 (<bos> and one token)")
    if self.kind == "words":
      dupes = sorted({w for w in self.vocabulary if self.vocabulary.count(w) > 1})
      if dupes:
        raise UserError(f"duplicate words in the vocabulary: {dupes}")

  @property
  def vocab_size(self) -> int:
    return len(SPECIAL_TOKENS) + (256 if self.kind == "bytes" else len(self.vocabulary))

  def _ids(self, text: str) -> list[int]:
    text = text.lower()
    base = len(SPECIAL_TOKENS)
    if self.kind == "bytes":
      ids = []
      for tag in TAGS:  # tags stay single tokens in byte mode too
        if text.startswith(tag):
          ids.append(SPECIAL_TOKENS.index(tag))
          text = text[len(tag):].lstrip()
      return ids + [base + b for b in text.encode("utf-8")]
    index = {w: base + i for i, w in enumerate(self.vocabulary)}
    ids = []
    for word in _WORD.findall(text):
      if word in TAGS:
        ids.append(SPECIAL_TOKENS.index(word))
      else:
        ids.append(index.get(word, SPECIAL_TOKENS.index(UNK)))
    return ids

  def length(self, text: str) -> int:
    """Tokens `text` needs, <bos> included (`encode` truncates beyond max_length)."""
    return 1 + len(self._ids(text))

  def encode(self, text: str) -> np.ndarray:
    """int32 [max_length]: <bos>, tokens, padding (truncated to max_length)."""
    ids = [SPECIAL_TOKENS.index(BOS)] + self._ids(text)
    ids = ids[:self.max_length]
    return np.array(ids + [0] * (self.max_length - len(ids)), np.int32)

  def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
    return np.stack([self.encode(t) for t in texts]) if texts else np.zeros((0, self.max_length), np.int32)

  def unknown_words(self, text: str) -> list[str]:
    """Words of `text` the vocabulary lacks (they become <unk>); empty for byte tokenizers."""
    if self.kind == "bytes":
      return []
    known = set(self.vocabulary) | set(TAGS)
    return [w for w in _WORD.findall(text.lower()) if w not in known]

  def decode(self, ids: Sequence[int]) -> str:
    base = len(SPECIAL_TOKENS)
    if self.kind == "bytes":
      return bytes(i - base for i in ids if i >= base).decode("utf-8", errors="replace")
    words = [SPECIAL_TOKENS[i] if i < base else self.vocabulary[i - base] for i in ids if i not in (0, 1)]
    return " ".join(words)

  def tag_id(self, tag: str) -> int:
    return SPECIAL_TOKENS.index(tag)

  def to_dict(self) -> dict:
    return {"kind": self.kind, "vocabulary": list(self.vocabulary), "max_length": self.max_length}

  @classmethod
  def from_dict(cls, d: dict) -> "Tokenizer":
    return cls(kind=d["kind"], vocabulary=tuple(d.get("vocabulary", ())), max_length=int(d["max_length"]))


def prepend_tag(tokens: np.ndarray, tag_id: int) -> np.ndarray:
  """Inserts a task tag after <bos> in token rows [..., L] (the last token falls off)."""
  return np.concatenate([tokens[..., :1], np.full_like(tokens[..., :1], tag_id), tokens[..., 1:-1]], axis=-1)
