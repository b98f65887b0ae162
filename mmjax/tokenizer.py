"""A small SentencePiece tokenizer trained on a dataset's text.

* Fixed special ids: pad=0, bos=1, eos=2, unk=3.
* ``byte_fallback=True`` (256 byte pieces), so any unicode text encodes and decodes losslessly
  (normalisation is "identity" and whitespace is kept as is; only a leading space is dropped by
  SentencePiece's dummy-prefix convention).
* ``hard_vocab_limit=False``: ``vocab_size`` is a maximum; on small template corpora (shapes) the
  model ends up with about one piece per word.
* Training is deterministic (single thread, no sentence sampling/shuffling): the same texts give the
  same model bytes.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Iterable, Sequence

import sentencepiece as spm

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


class Tokenizer:
  """Wraps a SentencePiece model with fixed pad/bos/eos/unk ids."""

  pad_id = PAD_ID
  bos_id = BOS_ID
  eos_id = EOS_ID
  unk_id = UNK_ID

  def __init__(self, model_proto: bytes, path: str | None = None):
    self._proto = bytes(model_proto)
    self.path = path
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    got = (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id())
    if got != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
      raise ValueError(f"tokenizer {path}: special ids {got} != (0, 1, 2, 3)")

  # -- construction -------------------------------------------------------------------------------

  @classmethod
  def train(cls, texts: Iterable[str], model_path: str | os.PathLike | None, vocab_size: int = 512) -> "Tokenizer":
    """Trains on ``texts`` and (if ``model_path``) writes the model there atomically."""
    texts = [t.replace("\n", " ") for t in texts if t and t.strip()]
    if not texts:
      raise ValueError("Tokenizer.train needs at least one non-empty text")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts),
      model_writer=model,
      model_type="bpe",
      vocab_size=int(vocab_size),
      hard_vocab_limit=False,
      byte_fallback=True,
      character_coverage=1.0,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      split_digits=False,
      pad_id=PAD_ID,
      bos_id=BOS_ID,
      eos_id=EOS_ID,
      unk_id=UNK_ID,
      pad_piece="<pad>",
      bos_piece="<s>",
      eos_piece="</s>",
      unk_piece="<unk>",
      num_threads=1,
      shuffle_input_sentence=False,
      input_sentence_size=0,
      max_sentence_length=1 << 16,
      minloglevel=2,
    )
    proto = model.getvalue()
    path = None
    if model_path is not None:
      path = os.fspath(model_path)
      d = os.path.dirname(os.path.abspath(path))
      os.makedirs(d, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=d, prefix=".tokenizer.", suffix=".tmp")
      try:
        with os.fdopen(fd, "wb") as f:
          f.write(proto)
        os.replace(tmp, path)
      except BaseException:
        if os.path.exists(tmp):
          os.remove(tmp)
        raise
    return cls(proto, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Tokenizer":
    with open(path, "rb") as f:
      return cls(f.read(), os.fspath(path))

  def save(self, path: str | os.PathLike) -> None:
    with open(path, "wb") as f:
      f.write(self._proto)

  @property
  def model_proto(self) -> bytes:
    return self._proto

  # -- use ----------------------------------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` without bos/eos."""
    return list(self._sp.encode(text, out_type=int))

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ``ids``: stops at the first eos, skips pad and bos."""
    out = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i in (PAD_ID, BOS_ID):
        continue
      out.append(i)
    return self._sp.decode(out)

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def __repr__(self):
    return f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size})"
