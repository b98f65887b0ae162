"""Tokenizers of pretrained checkpoints (Hugging Face, SentencePiece, CLIP) behind mmjax's tokenizer interface.

``load_tokenizer(path, location_bins=0)`` takes a checkpoint directory (or one tokenizer file) and returns an
``HFTokenizer`` with the interface of ``mmjax.tokenizer.Tokenizer``: ``pad_id``/``bos_id``/``eos_id``/``unk_id``,
``vocab_size``, ``encode`` (no bos/eos), ``decode``, ``id_to_piece``, ``path``, ``location_bins``, ``locations``.

What is loaded (a directory is searched in this order):

* ``tokenizer.json`` (any Hugging Face fast tokenizer: GPT-2 style byte-level BPE, Llama, Gemma, CLIP, BERT ...);
* ``tokenizer.model``, a SentencePiece model (Llama / Gemma style BPE, or unigram), converted to the same backend;
* ``vocab.json`` + ``merges.txt`` (CLIP's BPE, or GPT-2's when the merges have no ``</w>``);
* as a file path, also ``bpe_simple_vocab_16e6.txt.gz``, CLIP's BPE as open_clip ships it.

Besides that interface: ``text_vocab_size`` (V, the ids without location tokens), ``backend``, ``family``,
``special_tokens`` (role -> token), ``notes`` and ``save(directory)`` (copies the files read, for a run's workdir).

One class serves them all: every tokenizer runs on a ``tokenizers.Tokenizer`` (the Rust backend that transformers 5
uses for every tokenizer), so there is one encode/decode path and one way to add location tokens.

Same ids as ``transformers.AutoTokenizer`` (5.x). transformers 5 does not always run a ``tokenizer.json`` as written:
when ``tokenizer_class`` names a model-specific class, it keeps only the vocabulary and merges and rebuilds the
normalizer, pre-tokenizer and decoder as that class hard-codes them (e.g. ``LlamaTokenizer`` uses a Metaspace
pre-tokenizer, so ``" hi"`` gets no second "▁", unlike SentencePiece and the legacy tokenizer.json). So that
``encode`` gives AutoTokenizer's ids, this module mirrors those rebuilds for the families mmjax imports: Llama,
Gemma, GPT-2, CLIP and BERT (``_FAMILIES``); any other class runs its tokenizer.json as written (what transformers
does for ``TokenizersBackend`` / ``PreTrainedTokenizerFast``). A ``tokenizer.model`` is converted the way
transformers converts it (vocabulary and merges by piece id, control and user-defined pieces as added tokens).

Special ids. Token strings come from ``tokenizer_config.json`` (``bos_token``, ``eos_token``, ``pad_token``,
``unk_token``, ``cls_token``, ``sep_token``, ``mask_token``; a string or an AddedToken dict);
``special_tokens_map.json`` overrides them only when ``tokenizer_config.json`` has no ``added_tokens_decoder`` (as
transformers reads them); keys absent from both take the family's defaults (``_FAMILIES``); a named token missing
from the vocabulary is added after it, as transformers does (e.g. Gemma's ``<mask>``). ``config.json``'s
``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` (the first one of a list) fill in what the tokenizer files
leave unset. Then, per mmjax role:

* bos: the bos token, else the cls token (BERT: [CLS] starts a sequence), else config.json, else eos (GPT-2's
  convention of one ``<|endoftext|>`` for both; ``decode`` handles bos == eos, see there).
* eos: the eos token, else the sep token (BERT: [SEP] ends a sequence), else config.json; none is an error.
* pad: the pad token, else config.json, else eos. Llama and GPT-2 have no pad token. Reusing eos adds no untrained id
  and is safe in mmjax: padding only follows the eos that ends a target, is masked out of the loss, and ``decode``
  stops at the first eos (this is also Hugging Face's practice, ``pad_token = eos_token``). CLIP's OpenAI config
  already pads with ``<|endoftext|>`` (= eos); open_clip pads with 0 ("!"), which only matters for its own arrays.
* unk: the unk token, else None (byte-level BPE without an unknown token cannot produce one).

``notes`` lists, in words, every fallback taken and every id on which config.json disagrees with the tokenizer files
(those win, as in AutoTokenizer). Added tokens come from ``added_tokens_decoder``, else from tokenizer.json and the
legacy ``added_tokens.json``.

Location tokens (grounding, see mmjax.location_tokens): ``location_bins=N > 0`` reserves N ids right after the
tokenizer's vocabulary (its largest id + 1, added tokens included), ``locations = LocationTokens.for_vocab(V, N)``,
``vocab_size = V + N``, exactly as mmjax's own tokenizer does. They are added to a copy of the backend as special
tokens that are not normalized, so "<locNNNN>" in text becomes its id wherever it stands (before normalization:
BERT's lowercasing cannot touch it), the text around it is tokenized as Hugging Face tokenizes text around any added
token, and ``decode`` renders the ids back as "<locNNNN>". Any other ``<loc[0-9]+>`` spelling (bin >= N, other
padding) is a one-line ValueError, as in mmjax's tokenizer. A vocabulary that already holds "<loc0000>" ...
"<loc{N-1}>" as consecutive ids (PaliGemma's Gemma tokenizer has 1024 of them) reuses them instead (vocab_size stays
V); holding only some of them, or out of order, is an error. A checkpoint's embedding table may have more rows than
V (config.json's vocab_size rounded up): the location ids then fall on rows the checkpoint never trained, so whoever
imports the embeddings sizes the table to ``vocab_size`` and initialises rows V and up afresh.
"""

from __future__ import annotations

import copy
import gzip
import json
import numbers
import os
import re
import shutil
from typing import Any, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, Unigram, WordPiece

from mmjax.location_tokens import LOC_PATTERN, LocationTokens

# The named special tokens, in the order transformers adds missing ones (so new ids come out the same).
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# transformers 5 tokenizer classes whose __init__ rebuilds the pipeline -> (family, the class's default tokens).
_FAMILIES: dict[str, tuple[str, dict[str, str]]] = {
  "LlamaTokenizer": ("llama", {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}),
  "GemmaTokenizer": (
    "gemma",
    {"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "mask_token": "<mask>"},
  ),
  "GPT2Tokenizer": (
    "gpt2",
    {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
  ),
  "CLIPTokenizer": (
    "clip",
    {
      "unk_token": "<|endoftext|>",
      "bos_token": "<|startoftext|>",
      "eos_token": "<|endoftext|>",
      "pad_token": "<|endoftext|>",
    },
  ),
  "BertTokenizer": (
    "bert",
    {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"},
  ),
}
_FAMILY_CLASS = {family: name for name, (family, _) in _FAMILIES.items()}
# The model types (config.json) AutoTokenizer 5.x maps to a class of its own, for the families above, and those it
# maps to the generic backend even when tokenizer_config.json names a class (LLaVA ships "LlamaTokenizer").
_MODEL_TYPE_FAMILY = {
  "gemma": "gemma",
  "gemma2": "gemma",
  "gemma3": "gemma",
  "gemma3_text": "gemma",
  "gpt2": "gpt2",
  "clip": "clip",
  "bert": "bert",
  "llava": "generic",
  "llava_next": "generic",
  "vipllava": "generic",
  "mistral": "generic",
  "phi3": "generic",
  "smolvlm": "generic",
}
# The tokenizers model each family's class builds: the rebuild only applies to a tokenizer.json of that kind.
_FAMILY_MODEL = {"llama": "BPE", "gemma": "BPE", "gpt2": "BPE", "clip": "BPE", "bert": "WordPiece"}

# The configuration files load_tokenizer reads next to the tokenizer file (and save copies).
_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "config.json")

_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# open_clip's bpe_simple_vocab_16e6.txt.gz: a header line, then the merges CLIP uses (49152 - 256 - 2 of them).
_CLIP_NUM_MERGES = 49152 - 256 - 2


class HFTokenizer:
  """A ``tokenizers.Tokenizer`` with mmjax's tokenizer interface (see the module docstring).

  Build it with ``load_tokenizer``; the constructor takes an already assembled backend (not modified: location
  tokens go to a copy) and the special ids."""

  def __init__(
    self,
    backend: Tokenizer,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    unk_id: int | None,
    path: str | None = None,
    location_bins: int = 0,
    family: str = "generic",
    special_tokens: dict[str, str] | None = None,
    notes: Sequence[str] = (),
    clean_up_tokenization_spaces: bool = False,
  ):
    if not isinstance(location_bins, numbers.Integral) or isinstance(location_bins, bool) or location_bins < 0:
      raise ValueError(f"tokenizer {path}: location_bins must be an integer >= 0, got {location_bins!r}.")
    self.path = path
    self.family = family
    self.bos_id, self.eos_id, self.pad_id = int(bos_id), int(eos_id), int(pad_id)
    self.unk_id = None if unk_id is None else int(unk_id)
    self.special_tokens = dict(special_tokens or {})
    self.notes = tuple(notes)
    self._clean_up = bool(clean_up_tokenization_spaces)
    self._backend = backend
    # The text vocabulary: every id the backend knows (model and added tokens), whatever holes the ids leave.
    self.text_vocab_size = max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    self.location_bins = int(location_bins)
    self.locations = None
    self._vocab_size = self.text_vocab_size
    if self.location_bins:
      self._backend, self.locations, self._vocab_size = _with_locations(backend, self.location_bins, path)
    # Ids decode skips (until the first other id when one of them is also eos: see decode).
    self._skip = {self.pad_id, self.bos_id}

  @property
  def backend(self) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` that encodes and decodes (location tokens included when location_bins > 0)."""
    return self._backend

  @property
  def vocab_size(self) -> int:
    """Text ids plus the reserved location ids."""
    return self._vocab_size

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` without bos/eos (AutoTokenizer's ``add_special_tokens=False`` ids); "<locNNNN>" become
    location ids (if location_bins)."""
    if self.locations is not None:
      for m in LOC_PATTERN.finditer(text):
        self.locations.bin_of(m.group(0))  # ValueError naming the token and N for a bad one
    return self._backend.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ``ids``: stops at the first eos, skips pad and bos; location ids become "<locNNNN>".

    Where bos or pad is the same id as eos (GPT-2's single ``<|endoftext|>``; pad falling back to eos), that id is
    skipped as bos/padding before the first other id and ends the text after it. The rest is AutoTokenizer's
    ``decode`` (``skip_special_tokens=False``: other special tokens are rendered)."""
    out: list[int] = []
    for i in ids:
      i = int(i)
      if i in self._skip and (not out or i != self.eos_id):
        continue
      if i == self.eos_id:
        break
      if not 0 <= i < self._vocab_size:
        raise ValueError(f"tokenizer {self.path}: id {i} is outside the vocabulary [0, {self._vocab_size}).")
      out.append(i)
    text = self._backend.decode(out, skip_special_tokens=False)
    if self.family == "clip":
      # CLIPTokenizer's decode: its BPE marks word ends with "</w>", which the byte-level decoder leaves in place.
      text = text.replace("</w>", " ").strip()
    if self._clean_up and not _is_bpe(self._backend):
      # transformers applies clean_up_tokenization_spaces only to non-BPE models (WordPiece): it would eat real
      # spaces before punctuation in BPE output.
      text = _clean_up_tokenization(text)
    return text

  def id_to_piece(self, i: int) -> str:
    i = int(i)
    if self.locations is not None and self.locations.first_id <= i < self.locations.stop:
      return self.locations.text(i - self.locations.first_id)
    piece = self._backend.id_to_token(i) if 0 <= i < self._vocab_size else None
    if piece is None:
      raise IndexError(f"tokenizer {self.path}: id {i} is not in the vocabulary [0, {self._vocab_size}).")
    return piece

  def save(self, directory: str | os.PathLike) -> list[str]:
    """Copies the files this tokenizer was loaded from into ``directory`` (created if needed), so that
    ``load_tokenizer(directory, location_bins=N)`` gives it back (e.g. into a run's workdir, independent of where the
    checkpoint lives). Like mmjax's tokenizer, location_bins is not saved: pass it back. Returns the paths written."""
    files = getattr(self, "_files", None)
    if not files:
      raise ValueError(f"{self!r} was not loaded with load_tokenizer: there are no files to save.")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    written = []
    for src, name in files:
      if name is None:  # open_clip's BPE file: saved as the vocab.json + merges.txt it amounts to
        written += write_clip_vocab_files(src, directory)
        continue
      dst = os.path.join(directory, name)
      if os.path.abspath(src) != os.path.abspath(dst):
        shutil.copyfile(src, dst)
      written.append(dst)
    return written

  def __repr__(self):
    extra = f", location_bins={self.location_bins}" if self.location_bins else ""
    return f"HFTokenizer(path={self.path!r}, family={self.family!r}, vocab_size={self.vocab_size}{extra})"


# -- loading -----------------------------------------------------------------------------------------------------


def load_tokenizer(path: str | os.PathLike, location_bins: int = 0) -> HFTokenizer:
  """The tokenizer of a checkpoint directory, or of one tokenizer file (see the module docstring for what is read).

  Raises FileNotFoundError / ValueError with a one-line message naming ``path`` when nothing usable is there."""
  path = os.fspath(path)
  if os.path.isdir(path):
    directory = path
    files = {n: os.path.join(path, n) for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")}
    if os.path.isfile(files["tokenizer.json"]):
      kind, file = "json", files["tokenizer.json"]
    elif os.path.isfile(files["tokenizer.model"]):
      kind, file = "spm", files["tokenizer.model"]
    elif os.path.isfile(files["vocab.json"]) and os.path.isfile(files["merges.txt"]):
      kind, file = "vocab_merges", files["vocab.json"]
    else:
      raise FileNotFoundError(
        f"{path}: no tokenizer here (looked for tokenizer.json, tokenizer.model, vocab.json + merges.txt)."
      )
  elif os.path.isfile(path):
    directory, name = os.path.split(os.path.abspath(path))
    file = path
    if name.endswith(".txt.gz"):
      kind = "clip_bpe"
    elif name.endswith(".model"):
      kind = "spm"
    elif name == "vocab.json" or name == "merges.txt":
      kind, file = "vocab_merges", os.path.join(directory, "vocab.json")
      if not (os.path.isfile(file) and os.path.isfile(os.path.join(directory, "merges.txt"))):
        raise FileNotFoundError(f"{path}: a BPE vocabulary needs both vocab.json and merges.txt in {directory}.")
    elif name.endswith(".json"):
      kind = "json"
    else:
      raise ValueError(
        f"{path}: not a tokenizer file (tokenizer.json, tokenizer.model, vocab.json, bpe_simple_vocab_16e6.txt.gz)."
      )
  else:
    raise FileNotFoundError(f"{path}: no such tokenizer file or checkpoint directory.")

  tc = _read_json(os.path.join(directory, "tokenizer_config.json")) if kind != "clip_bpe" else {}
  mc = _read_json(os.path.join(directory, "config.json")) if kind != "clip_bpe" else {}
  special_map = _read_special_map(directory, tc, kind)
  family = _family(tc, mc)
  added = _added_tokens_decoder(tc)
  if "added_tokens_decoder" not in tc and kind != "clip_bpe":
    added.update(_legacy_added_tokens(directory, tc, special_map))
  notes: list[str] = []

  def specials(of_family: str, defaults: dict | None = None) -> dict:
    """The special token strings, absent keys taking the class defaults of ``of_family`` (or ``defaults``)."""
    return _special_strings(tc, special_map, _FAMILIES[_FAMILY_CLASS[of_family]][1] if defaults is None else defaults)

  if kind == "json":
    text = _read_text(file)
    data = _parse_json(text, file)
    model = data.get("model") or {}
    if family != "generic" and model.get("type") != _FAMILY_MODEL[family]:
      notes.append(f"{_FAMILY_CLASS[family]} over a {model.get('type')} tokenizer.json: run as written")
      family = "generic"
    if family == "llama" and '"ByteLevel"' in text:
      # AutoTokenizer's own exception: a "LlamaTokenizer" whose tokenizer.json is byte-level (Llama 3) runs as is.
      family = "generic"
    if family == "generic":
      backend = _backend_from_file(file)
      tokens = specials(family, {})
    else:
      tokens = specials(family)
      backend = _build(family, *_vocab_and_merges(model, file), tokens, tc)
    if "added_tokens_decoder" not in tc:  # transformers then takes the added tokens from tokenizer.json
      for t in data.get("added_tokens") or []:
        added[int(t["id"])] = AddedToken(**{k: v for k, v in t.items() if k in _ADDED_FIELDS})
  elif kind == "spm":
    proto = _read_spm(file)
    if family in ("llama", "gemma"):
      if proto.trainer_spec.model_type != 2:  # 2: BPE
        raise ValueError(f"{file}: {_FAMILY_CLASS[family]} needs a BPE SentencePiece model; this one is not BPE.")
      vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
      tokens = specials(family)
      backend = _build(family, vocab, _merges_by_id(vocab), tokens, tc)
    else:
      if family != "generic":
        notes.append(f"{_FAMILY_CLASS[family]} over a SentencePiece model: converted as a generic one")
        family = "generic"
      backend = _backend_from_spm(proto, legacy=tc.get("legacy", True), path=file)
      spec = proto.trainer_spec
      defaults = {}
      for key, piece_id, piece in (
        ("bos_token", spec.bos_id, spec.bos_piece or "<s>"),
        ("eos_token", spec.eos_id, spec.eos_piece or "</s>"),
        ("unk_token", spec.unk_id, spec.unk_piece or "<unk>"),
      ):
        if piece_id >= 0:
          defaults[key] = piece
      tokens = specials(family, defaults)
    # Control pieces (<s>, </s>, ...) become added tokens matched on the raw text, and so do user-defined pieces,
    # except in the generic conversion, whose pre-tokenizer isolates those.
    backend.add_tokens(
      [
        AddedToken(p.piece, normalized=False, special=p.type == 3)
        for p in proto.pieces
        if p.type == 3 or (p.type == 4 and family != "generic")
      ]
    )
  else:  # vocab.json + merges.txt, or open_clip's merges file
    if kind == "clip_bpe":
      vocab, merges = clip_vocab_and_merges(file)
    else:
      vocab = _parse_json(_read_text(file), file)
      merges = _read_merges(os.path.join(os.path.dirname(file), "merges.txt"))
    if family not in ("clip", "gpt2"):
      # Only CLIP and GPT-2 ship a bare vocabulary and merges; CLIP's marks word ends with "</w>".
      family = "clip" if any(k.endswith("</w>") for k in vocab) else "gpt2"
    tokens = specials(family)
    backend = _build(family, vocab, merges, tokens, tc)

  # A tokenizer.json may switch on truncation (CLIP's max_length 77) or padding: AutoTokenizer's __call__ does
  # neither unless asked, and mmjax truncates and pads itself.
  backend.no_truncation()
  backend.no_padding()
  by_content = _added_by_content(added)
  tokens = {k: (by_content.get(str(v), v) if v is not None else None) for k, v in tokens.items()}
  _add_like_transformers(backend, added, tokens, _extra_special_tokens(tc, by_content))
  strings = {k[: -len("_token")]: str(v) for k, v in tokens.items() if v is not None}
  ids = _special_ids(backend, strings, mc, file, notes)
  tok = HFTokenizer(
    backend,
    **ids,
    path=path,
    location_bins=location_bins,
    family=family,
    special_tokens={k[: -len("_id")]: backend.id_to_token(v) for k, v in ids.items() if v is not None},
    notes=notes,
    clean_up_tokenization_spaces=bool(tc.get("clean_up_tokenization_spaces", False)),
  )
  # What save() copies, (source, name): the tokenizer file(s) read, under the names a directory is searched for, and
  # the configuration files next to them.
  main = {"json": [(file, "tokenizer.json")], "spm": [(file, "tokenizer.model")], "clip_bpe": [(file, None)]}.get(
    kind, [(file, "vocab.json"), (os.path.join(os.path.dirname(file), "merges.txt"), "merges.txt")]
  )
  configs = [(os.path.join(directory, n), n) for n in _CONFIG_FILES] if kind != "clip_bpe" else []
  tok._files = tuple((src, name) for src, name in main + configs if os.path.isfile(src))
  return tok


def clip_vocab_and_merges(path: str | os.PathLike) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """CLIP's vocabulary and merges from open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (or the same file unzipped).

  The ids are open_clip's ``SimpleTokenizer`` ids and those of Hugging Face's CLIP ``vocab.json``: the 256 byte
  symbols, the same with "</w>", one per merge, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407)
  (open_clip names them ``<start_of_text>`` / ``<end_of_text>``)."""
  path = os.fspath(path)
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      lines = f.read().decode("utf-8").split("\n")
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: cannot read CLIP's BPE merges ({e}).") from None
  merges = [tuple(line.split()) for line in lines[1 : _CLIP_NUM_MERGES + 1]]
  if len(merges) != _CLIP_NUM_MERGES or any(len(m) != 2 for m in merges):
    raise ValueError(f"{path}: not CLIP's BPE file (expected a header and {_CLIP_NUM_MERGES} merges of 2 symbols).")
  symbols = list(_bytes_to_unicode().values())
  pieces = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
  return {p: i for i, p in enumerate(pieces)}, merges


def write_clip_vocab_files(bpe_path: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[str, str]:
  """Writes Hugging Face's ``vocab.json`` and ``merges.txt`` for open_clip's BPE file into ``out_dir``."""
  vocab, merges = clip_vocab_and_merges(bpe_path)
  os.makedirs(out_dir, exist_ok=True)
  vocab_file, merges_file = os.path.join(out_dir, "vocab.json"), os.path.join(out_dir, "merges.txt")
  with open(vocab_file, "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(merges_file, "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  return vocab_file, merges_file


# -- backends ------------------------------------------------------------------------------------------------------

_ADDED_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


def _build(family: str, vocab: dict, merges: list, specials: dict, tc: dict) -> Tokenizer:
  """The backend a transformers 5 class builds from a vocabulary (and merges), pipeline and model options included
  (models/<family>/tokenization_<family>.py)."""
  unk = specials.get("unk_token")
  unk = None if unk is None else str(unk)
  if family == "llama":
    add_prefix_space = tc.get("add_prefix_space")
    add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
    # transformers' _get_prepend_scheme: "legacy" prefixes every chunk between added tokens, otherwise the first.
    scheme = ("always" if tc.get("legacy") else "first") if add_prefix_space else "never"
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    seq = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
      seq.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(seq)
  elif family == "gemma":
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token=unk, dropout=None, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.normalizer = normalizers.Replace(" ", "▁")
  elif family == "gpt2":
    model = BPE(
      vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
    )
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(tc.get("add_prefix_space", False)))
    tok.decoder = decoders.ByteLevel()
  elif family == "clip":
    model = BPE(
      vocab=vocab,
      merges=merges,
      dropout=None,
      continuing_subword_prefix="",
      end_of_word_suffix="</w>",
      fuse_unk=False,
      unk_token=unk,
    )
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence(
      [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
      [
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
      ]
    )
    tok.decoder = decoders.ByteLevel()
  elif family == "bert":
    tok = Tokenizer(WordPiece(vocab, unk_token=unk if unk is not None else "[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
      clean_text=True,
      handle_chinese_chars=tc.get("tokenize_chinese_chars") is not False,
      strip_accents=tc.get("strip_accents"),
      lowercase=tc.get("do_lower_case") is not False,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
  else:
    raise AssertionError(family)
  return tok


def _backend_from_spm(proto, legacy, path: str) -> Tokenizer:
  """A SentencePiece model as transformers 5 converts one of no known class (``SpmConverter.
  build_tokenizer_from_spm_proto``): it follows the model's own settings, so it encodes like SentencePiece."""
  spec = proto.normalizer_spec
  byte_fallback = proto.trainer_spec.byte_fallback
  user_defined = [p.piece for p in proto.pieces if p.type == 4]
  if proto.trainer_spec.model_type == 1:  # unigram
    tok = Tokenizer(
      Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=proto.trainer_spec.unk_id, byte_fallback=byte_fallback)
    )
  elif proto.trainer_spec.model_type == 2:  # BPE: only normal pieces merge, best score first
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == 1}
    ranked = []
    for piece, (score, i) in normal.items():
      for k in range(1, len(piece)):
        left, right = piece[:k], piece[k:]
        if left in normal and right in normal:
          ranked.append((-score, i, left, right))
    merges = [(left, right) for _, _, left, right in sorted(ranked)]
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    tok = Tokenizer(
      BPE(
        vocab=vocab,
        merges=merges,
        unk_token=proto.trainer_spec.unk_piece,
        fuse_unk=True,
        byte_fallback=byte_fallback,
        dropout=None,
        ignore_merges=bool(user_defined),
      )
    )
  else:
    raise ValueError(f"{path}: only unigram and BPE SentencePiece models are supported.")
  norm = []
  if spec.precompiled_charsmap:
    norm.append(normalizers.Precompiled(spec.precompiled_charsmap))
  if spec.remove_extra_whitespaces:
    norm += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
  if spec.escape_whitespaces:
    norm.append(normalizers.Replace(" ", "▁"))
  if spec.add_dummy_prefix and legacy:
    # Metaspace skips the dummy prefix when the text already starts with "▁"; SentencePiece does not.
    norm.append(normalizers.Replace(Regex(r"\A▁"), "▁▁"))
  tok.normalizer = normalizers.Sequence(norm)
  pre = []
  if spec.add_dummy_prefix:
    scheme = "always" if legacy else "first"
    pre.append(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False))
  if user_defined:
    pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
    pre.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
  if pre:
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
  dec = [decoders.Replace("▁", " ")]
  if byte_fallback:
    dec.append(decoders.ByteFallback())
  if spec.add_dummy_prefix:
    dec += [decoders.Fuse(), decoders.Strip(content=" ", left=1)]
  elif byte_fallback:
    dec.append(decoders.Fuse())
  tok.decoder = decoders.Sequence(dec)
  return tok


def _merges_by_id(vocab: dict[str, int]) -> list[tuple[str, str]]:
  """Merges of a BPE SentencePiece vocabulary as transformers derives them (``generate_merges``): every split of a
  piece into two pieces, ranked by the piece's id (a BPE model's pieces are in merge order)."""
  merges = []
  for piece, rank in vocab.items():
    local = [(piece[:k], piece[k:], rank) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
    local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges += local
  merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])))
  return [(a, b) for a, b, _ in merges]


def _with_locations(backend: Tokenizer, n: int, path) -> tuple[Tokenizer, LocationTokens, int]:
  """A copy of ``backend`` with N location tokens, their LocationTokens and the vocabulary size with them."""
  text_vocab = max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1
  names = LocationTokens.for_vocab(text_vocab, n)
  texts = [names.text(b) for b in range(n)]
  have = [backend.token_to_id(t) for t in texts]
  if any(i is not None for i in have):
    # The checkpoint has location tokens of its own (PaliGemma): use them if they are all there, in order.
    if None in have or have != list(range(have[0], have[0] + n)):
      raise ValueError(
        f"tokenizer {path}: its vocabulary holds some location tokens ({texts[0]} ... {texts[-1]}) but not all "
        f"{n} as consecutive ids: use another location_bins."
      )
    return backend, LocationTokens(num_bins=n, first_id=have[0]), text_vocab
  backend = copy.deepcopy(backend)
  backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in texts])
  got = [backend.token_to_id(t) for t in texts]
  if got != list(names.ids):  # only a vocabulary with holes in its ids (or duplicates) can get here
    raise ValueError(
      f"tokenizer {path}: location tokens would get ids {got[0]}... instead of {names.first_id}... right after the "
      f"vocabulary: its ids are not 0 ... {text_vocab - 1} without holes."
    )
  return backend, names, names.stop


def _add_like_transformers(backend: Tokenizer, added: dict[int, AddedToken], specials: dict, extras: list) -> None:
  """Adds the checkpoint's added tokens, then its named and extra special tokens, in transformers' order (tokens
  not in the vocabulary get the next ids in that order); special tokens end up matched on the raw text."""
  have = {repr(t) for t in backend.get_added_tokens_decoder().values()}
  backend.add_tokens([t for _, t in sorted(added.items()) if repr(t) not in have])
  named = []
  for v in list(specials.values()) + list(extras):
    if v is None:
      continue
    if isinstance(v, AddedToken):
      v = AddedToken(**{**v.__getstate__(), "special": True})
    else:
      v = AddedToken(str(v), special=True, normalized=False)
    named.append(v)
  backend.add_special_tokens(named)


def _special_ids(backend: Tokenizer, strings: dict[str, str], mc: dict, file: str, notes: list) -> dict:
  """mmjax's bos/eos/pad/unk ids from the special token strings and config.json (module docstring)."""

  def tid(role):
    token = strings.get(role)
    return None if token is None else backend.token_to_id(token)

  def from_config(role):
    v = mc.get(f"{role}_token_id")
    if isinstance(v, (list, tuple)):
      v = v[0] if v else None
    return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else None

  ids = {}
  for role, alias in (("bos", "cls"), ("eos", "sep"), ("pad", None), ("unk", None)):
    i = tid(role)
    if i is None and alias is not None and tid(alias) is not None:
      i = tid(alias)
      notes.append(f"{role} = {alias} token {strings[alias]!r} (id {i}): the tokenizer has no {role} token")
    configured = mc.get(f"{role}_token_id")
    configured = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    if i is None and from_config(role) is not None:
      i = from_config(role)
      notes.append(f"{role} = {i} from config.json ({role}_token_id)")
    elif i is not None and configured != [None] and i not in configured:
      # The tokenizer files win, as in AutoTokenizer; a checkpoint whose files disagree deserves a look.
      notes.append(f"{role} = {i} ({strings.get(role) or strings.get(alias)!r}) although config.json says {configured}")
    ids[role] = i
  if ids["eos"] is None:
    raise ValueError(f"{file}: no eos token (tokenizer_config.json, special_tokens_map.json, config.json).")
  if ids["bos"] is None:
    ids["bos"] = ids["eos"]
    notes.append(f"bos = eos (id {ids['eos']}): the checkpoint has no bos token; sequences start with eos (GPT-2)")
  if ids["pad"] is None:
    ids["pad"] = ids["eos"]
    notes.append(
      f"pad = eos (id {ids['eos']}): the checkpoint has no pad token; padding only follows the eos that ends a "
      "sequence, is masked out of the loss, and decode stops at the first eos"
    )
  return {f"{role}_id": i for role, i in ids.items()}


# -- configuration files -------------------------------------------------------------------------------------------


def _family(tc: dict, mc: dict) -> str:
  """The family whose transformers class AutoTokenizer 5.x would instantiate, or "generic" (tokenizer.json as is)."""
  name = tc.get("tokenizer_class") or mc.get("tokenizer_class") or ""
  name = name.removesuffix("Fast") if isinstance(name, str) else ""
  registered = _MODEL_TYPE_FAMILY.get(mc.get("model_type"))
  if name:
    family = _FAMILIES[name][0] if name in _FAMILIES else "generic"
    return "generic" if registered == "generic" else family
  return registered or "generic"


def _special_strings(tc: dict, special_map: dict, defaults: dict) -> dict[str, Any]:
  """key -> str / AddedToken / None for SPECIAL_KEYS: tokenizer_config.json, overridden by special_tokens_map.json
  (already filtered by _read_special_map), else the class default (an explicit null stays None)."""
  out = {}
  for key in SPECIAL_KEYS:
    if key in special_map:
      v = special_map[key]
    elif key in tc:
      v = tc[key]
    else:
      v = defaults.get(key)
    out[key] = _as_token(v)
  return out


def _read_special_map(directory: str, tc: dict, kind: str) -> dict:
  """special_tokens_map.json, which transformers 5 only reads when tokenizer_config.json has no added_tokens_decoder."""
  if kind == "clip_bpe" or "added_tokens_decoder" in tc:
    return {}
  m = _read_json(os.path.join(directory, "special_tokens_map.json"))
  return {k: v for k, v in m.items() if k in SPECIAL_KEYS}


def _added_tokens_decoder(tc: dict) -> dict[int, AddedToken]:
  out = {}
  for i, t in (tc.get("added_tokens_decoder") or {}).items():
    if isinstance(t, dict):
      out[int(i)] = AddedToken(**{k: v for k, v in t.items() if k in _ADDED_FIELDS})
  return out


def _legacy_added_tokens(directory: str, tc: dict, special_map: dict) -> dict[int, AddedToken]:
  """added_tokens.json ({token: id}) of checkpoints saved before added_tokens_decoder existed, read as transformers
  reads it (special when it is a named special token; then not normalized)."""
  names = {str(_as_token(v)) for v in list(tc.values()) + list(special_map.values()) if _as_token(v) is not None}
  out = {}
  for content, i in _read_json(os.path.join(directory, "added_tokens.json")).items():
    special = content in names
    out[int(i)] = AddedToken(content, rstrip=False, lstrip=False, normalized=not special, special=special)
  return out


def _added_by_content(added: dict[int, AddedToken]) -> dict[str, AddedToken]:
  return {str(t.content): t for t in added.values()}


def _extra_special_tokens(tc: dict, by_content: dict[str, AddedToken]) -> list:
  """extra_special_tokens / additional_special_tokens and model-specific "*_token" strings of tokenizer_config.json."""
  out: list = []
  for key in ("extra_special_tokens", "additional_special_tokens"):
    v = tc.get(key)
    values = list(v.values()) if isinstance(v, dict) else list(v or [])
    out += [_as_token(x) for x in values]
  for key, v in tc.items():
    if key.endswith("_token") and key not in SPECIAL_KEYS and isinstance(v, str):
      out.append(v)
  return [by_content.get(str(t), t) for t in out if t is not None]


def _as_token(v):
  if isinstance(v, dict):
    fields = {k: x for k, x in v.items() if k in _ADDED_FIELDS}
    return AddedToken(**{**fields, "special": True}) if "content" in fields else None
  return v if isinstance(v, str) else None


def _read_json(path: str) -> dict:
  """A configuration file next to the tokenizer ({} when absent)."""
  return _parse_json(_read_text(path), path) if os.path.isfile(path) else {}


def _read_text(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: cannot read it ({e}).") from None


def _parse_json(text: str, path: str) -> dict:
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e}).") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}.")
  return data


def _read_merges(path: str) -> list[tuple[str, str]]:
  """merges.txt as transformers reads it: one "a b" per line, lines starting with "#" skipped."""
  with open(path, encoding="utf-8") as f:
    merges = [tuple(line.split()) for line in (raw.strip() for raw in f) if line and not line.startswith("#")]
  bad = [m for m in merges if len(m) != 2]
  if bad:
    raise ValueError(f"{path}: a merge must be 2 symbols, got {' '.join(bad[0])!r}.")
  return merges


def _read_spm(path: str):
  from sentencepiece import sentencepiece_model_pb2

  proto = sentencepiece_model_pb2.ModelProto()
  try:
    with open(path, "rb") as f:
      proto.ParseFromString(f.read())
  except Exception as e:  # protobuf raises its own DecodeError (and others) for a file that is not a model
    raise ValueError(f"{path}: not a SentencePiece model ({type(e).__name__}).") from None
  if not proto.pieces:
    raise ValueError(f"{path}: not a SentencePiece model (no pieces).")
  return proto


def _backend_from_file(path: str) -> Tokenizer:
  try:
    return Tokenizer.from_file(path)
  except Exception as e:  # tokenizers raises a bare Exception for a malformed file
    raise ValueError(
      f"{path}: not a tokenizers tokenizer.json ({str(e).splitlines()[0] if str(e) else e!r})."
    ) from None


def _vocab_and_merges(model: dict, path: str) -> tuple[dict, list]:
  vocab = model.get("vocab")
  if isinstance(vocab, list):  # some files list [piece, score] pairs
    vocab = {(v[0] if isinstance(v, list) else v): i for i, v in enumerate(vocab)}
  if not isinstance(vocab, dict):
    raise ValueError(f"{path}: its model has no vocabulary.")
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
  return vocab, merges


def _is_bpe(backend: Tokenizer) -> bool:
  return type(backend.model).__name__ == "BPE"


def _clean_up_tokenization(text: str) -> str:
  """transformers' clean_up_tokenization (applied on decode when the tokenizer config asks for it, non-BPE only)."""
  for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m")):
    text = text.replace(a, b)
  for a, b in ((" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
    text = text.replace(a, b)
  return text


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2 / CLIP's byte -> printable character table (the byte-level alphabet)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, (chr(c) for c in cs)))
