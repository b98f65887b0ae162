"""A small SentencePiece tokenizer trained on a dataset's text.

* Fixed special ids: pad=0, bos=1, eos=2, unk=3.
* ``byte_fallback=True`` (256 byte pieces), so any unicode text encodes and decodes losslessly
  (normalisation is "identity" and whitespace is kept as is; only a leading space is dropped by
  SentencePiece's dummy-prefix convention).
* ``hard_vocab_limit=False``: ``vocab_size`` is a maximum; on small template corpora (shapes) the
  model ends up with about one piece per word.
* Training is deterministic (single thread, no sentence sampling/shuffling): the same texts give the
  same model bytes.

Location tokens (grounding, PaliGemma style; see mmjax.location_tokens):

* ``location_bins=N > 0`` reserves N ids right after the SentencePiece pieces,
  ``locations = LocationTokens.for_vocab(sp_size, N)``, so ``vocab_size = sp_size + N`` and no
  location id collides with a text id. N = 0 (the default) is exactly the plain tokenizer.
* ``encode`` turns every "<locNNNN>" in the text (the spelling ``LocationTokens.text`` writes: at
  least 4 zero-padded digits) into its reserved id; anything else spelled ``<loc[0-9]+>`` (a bin >= N,
  other padding) is a one-line ValueError naming the token and N. The text between location tokens
  is encoded by SentencePiece in pieces: the text before the first location token exactly as without
  location tokens (dummy prefix and all); the text after a location token without a dummy prefix, so
  its characters, spaces included, are kept as they are: the space in "<loc0600> dog" is an ordinary
  character, encoded as the "▁" of the next piece, and decoded back as one space (nothing is added or
  dropped, and "<loc0600>dog" round-trips too). This is how PaliGemma, whose location tokens are
  pieces of its SentencePiece model, encodes it.
* ``decode`` / ``id_to_piece`` render location ids as "<locNNNN>", so ``decode(encode(s)) == s``
  whenever SentencePiece round-trips the text before the first location token (the caveat above).
* N is not stored in the SentencePiece model file: whoever saves a tokenizer must persist N and
  pass it back to ``load`` (the experiment config is meant to, as its location-bin count).
"""

from __future__ import annotations

import io
import numbers
import os
import tempfile
from typing import Iterable, Sequence

import sentencepiece as spm

from mmjax.location_tokens import LOC_PATTERN, PHRASE_TAGS, LocationTokens

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


class Tokenizer:
  """Wraps a SentencePiece model with fixed pad/bos/eos/unk ids."""

  pad_id = PAD_ID
  bos_id = BOS_ID
  eos_id = EOS_ID
  unk_id = UNK_ID

  def __init__(self, model_proto: bytes, path: str | None = None, location_bins: int = 0):
    self._proto = bytes(model_proto)
    self.path = path
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    got = (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id())
    if got != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
      raise ValueError(f"tokenizer {path}: special ids {got} != (0, 1, 2, 3)")
    if not isinstance(location_bins, numbers.Integral) or isinstance(location_bins, bool) or location_bins < 0:
      raise ValueError(f"tokenizer {path}: location_bins must be an integer >= 0, got {location_bins!r}.")
    self.location_bins = int(location_bins)
    # None without location tokens; else ids [sp_size, sp_size + location_bins).
    self.locations = LocationTokens.for_vocab(self._sp.get_piece_size(), self.location_bins) if location_bins else None
    self._sp_inner = None  # SentencePiece without the dummy prefix, for text after a location token

  # -- construction -------------------------------------------------------------------------------

  @classmethod
  def train(
    cls, texts: Iterable[str], model_path: str | os.PathLike | None, vocab_size: int = 512, location_bins: int = 0
  ) -> "Tokenizer":
    """Trains on ``texts`` and (if ``model_path``) writes the model there atomically.

    ``vocab_size`` bounds the SentencePiece pieces only; ``location_bins`` location ids come on top.
    Location tokens in ``texts`` are not taken out before training: train on text without them.
    Grounded-phrase tags (``location_tokens.PHRASE_TAGS``) that occur in the texts become one piece
    each (otherwise about 3 pieces each, 6 per grounded phrase); texts without them train exactly the
    tokenizer they always did."""
    texts = [t.replace("\n", " ") for t in texts if t and t.strip()]
    if not texts:
      raise ValueError("Tokenizer.train needs at least one non-empty text")
    tags = [tag for tag in PHRASE_TAGS if any(tag in t for t in texts)]
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
      **({"user_defined_symbols": tags} if tags else {}),
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
    return cls(proto, path, location_bins)

  @classmethod
  def load(cls, path: str | os.PathLike, location_bins: int = 0) -> "Tokenizer":
    """The model at ``path``; ``location_bins`` is not in the file: pass the N it was used with."""
    with open(path, "rb") as f:
      return cls(f.read(), os.fspath(path), location_bins)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the SentencePiece model (not ``location_bins``: the caller persists that)."""
    with open(path, "wb") as f:
      f.write(self._proto)

  @property
  def model_proto(self) -> bytes:
    return self._proto

  # -- use ----------------------------------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    """SentencePiece pieces plus location ids."""
    return self._sp.get_piece_size() + self.location_bins

  def _inner(self) -> spm.SentencePieceProcessor:
    """The same model with add_dummy_prefix off: text after a location token keeps its leading
    characters as they are (see the module docstring)."""
    if self._sp_inner is None:
      from sentencepiece import sentencepiece_model_pb2

      m = sentencepiece_model_pb2.ModelProto()
      m.ParseFromString(self._proto)
      m.normalizer_spec.add_dummy_prefix = False
      self._sp_inner = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
    return self._sp_inner

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` without bos/eos; "<locNNNN>" become location ids (if location_bins)."""
    if self.locations is None:
      return list(self._sp.encode(text, out_type=int))
    loc = self.locations
    out: list[int] = []
    pos, after_location = 0, False
    for m in LOC_PATTERN.finditer(text):
      b = loc.bin_of(m.group(0))  # ValueError naming the token and N for a bad one
      out += self._encode_text(text[pos : m.start()], after_location)
      out.append(loc.first_id + b)
      pos, after_location = m.end(), True
    return out + self._encode_text(text[pos:], after_location)

  def _encode_text(self, text: str, after_location: bool) -> list[int]:
    if not text:
      return []
    return list((self._inner() if after_location else self._sp).encode(text, out_type=int))

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ``ids``: stops at the first eos, skips pad and bos; location ids become "<locNNNN>"."""
    out = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i in (PAD_ID, BOS_ID):
        continue
      out.append(i)
    if self.locations is None:
      return self._sp.decode(out)
    loc, parts, run, after_location = self.locations, [], [], False
    for i in out:
      if loc.first_id <= i < loc.stop:
        parts.append(self._decode_text(run, after_location) + loc.text(i - loc.first_id))
        run, after_location = [], True
      else:
        run.append(i)
    return "".join(parts) + self._decode_text(run, after_location)

  def _decode_text(self, ids: list[int], after_location: bool) -> str:
    if not ids:
      return ""
    return (self._inner() if after_location else self._sp).decode(ids)

  def id_to_piece(self, i: int) -> str:
    i = int(i)
    if self.locations is not None and self.locations.first_id <= i < self.locations.stop:
      return self.locations.text(i - self.locations.first_id)
    return self._sp.id_to_piece(i)

  def __repr__(self):
    extra = f", location_bins={self.location_bins}" if self.location_bins else ""
    return f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size}{extra})"
