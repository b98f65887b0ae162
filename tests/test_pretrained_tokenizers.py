"""mmjax.pretrained.tokenizers against transformers.AutoTokenizer (and open_clip, sentencepiece) on tokenizers built
here: no hub is reachable, so every checkpoint directory is trained or written locally and saved with transformers.

Families: GPT-2 style byte-level BPE (generic tokenizer.json and GPT2Tokenizer), Llama and Gemma (a SentencePiece
tokenizer.model, and the tokenizer.json transformers saves from it; Llama also with a legacy-style tokenizer.json),
a SentencePiece model of no class, BERT WordPiece (uncased and cased), CLIP from open_clip's real BPE file.
"""

import copy
import importlib.util
import io
import json
import os
import pickle
import shutil

import pytest

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from tokenizers import AddedToken  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from mmjax.pretrained.tokenizers import (  # noqa: E402
  HFTokenizer,
  clip_vocab_and_merges,
  load_tokenizer,
  write_clip_vocab_files,
)

STRINGS = [
  "",
  " ",
  "   ",
  "\n",
  "\t",
  "hello",
  "Hello world",
  " leading space",
  "  two leading spaces",
  "trailing space ",
  "trailing two  ",
  "repeated   inner    spaces",
  "line one\nline two",
  "para\n\n\nbreaks\n",
  "tab\tseparated\tvalues",
  " \t\n mixed \n\t ",
  "café naïve résumé façade",
  "Ça va? À bientôt! Øre Ångström",
  "日本語のテキストです",
  "中文字符 和 English",
  "한국어",
  "emoji 😀🎉 done",
  "👍🏽 family 👨‍👩‍👧",
  "1234567890",
  "3.14159 and 2,718 and -42",
  "punctuation !?.,;:'\"()[]{}-_/\\@#$%^&*+=~`|",
  "don't won't I'm you're it's",
  "MiXeD CaSe WORDS",
  "The quick brown fox jumps over the lazy dog.",
  "A photo of a cat sitting on a red sofa.",
]
# Texts with the tokenizers' own special tokens in them: encoded like transformers (split out as special tokens).
SPECIAL_STRINGS = [
  "a <|endoftext|> b",
  "<s>x</s>",
  "<bos>hi<eos>",
  "[CLS] x [SEP]",
  "<|startoftext|>y",
  "<start_of_turn>user\nhi <end_of_turn> ",
]
CORPUS = [
  "Hello world, this is a test of the tokenizer.",
  "The quick brown fox jumps over the lazy dog 1234567890!",
  "A photo of a cat sitting on a red sofa. A dog on the grass.",
  "héllo wörld café naïve façade résumé",
  "日本語 テスト 中文",
  "tabs\tand newlines and   spaces, don't you're it's",
] * 10
LOC_TEXTS = [
  "<loc0001><loc0002><loc0010><loc0015> dog ; <loc0000><loc0000><loc0003><loc0004> cat",
  "detect dog ; cat",
  "a<loc0005>b",
  "<loc0007>",
  "the <loc0003> dog<loc0004>",
  " <loc0001>  two  <loc0002>\n",
]
# Families that decode what they encode (no lowercasing, no whitespace normalisation).
LOSSLESS = ("gpt2_generic", "gpt2", "llama_spm", "llama_json", "gemma_spm", "gemma_json")


# -- building checkpoint directories ---------------------------------------------------------------------------------


def _byte_level_bpe():
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
  )
  tok.train_from_iterator(CORPUS, trainer)
  return tok


def _sentencepiece(llama: bool) -> bytes:
  """A BPE SentencePiece model as Llama (dummy prefix, <unk> <s> </s> = 0 1 2) or Gemma (no dummy prefix,
  <pad> <eos> <bos> <unk> = 0 1 2 3) train theirs: byte fallback, identity normalisation, digits split."""
  ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1) if llama else dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3)
  pieces = dict(bos_piece="<s>", eos_piece="</s>") if llama else dict(bos_piece="<bos>", eos_piece="<eos>")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(CORPUS),
    model_writer=model,
    model_type="bpe",
    vocab_size=420,
    hard_vocab_limit=False,
    byte_fallback=True,
    character_coverage=1.0,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    split_digits=True,
    add_dummy_prefix=llama,
    user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
    num_threads=1,
    minloglevel=2,
    **ids,
    **pieces,
  )
  return model.getvalue()


def _write(directory, name, content):
  os.makedirs(directory, exist_ok=True)
  mode = "wb" if isinstance(content, bytes) else "w"
  with open(os.path.join(directory, name), mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
    f.write(content if isinstance(content, (str, bytes)) else json.dumps(content))


def _bert_vocab(directory):
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
  words += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + list("ABCDEFGHIJKLMNOPQRSTUVWXYZéçà日本語中文")
  words += ["the", "hello", "world", "##ing", "photo", "cat", "dog", "caf", "##é", "quick", "brown", "fox", "##es"]
  _write(directory, "vocab.txt", "\n".join(words) + "\n")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  """name -> checkpoint directory."""
  root = str(tmp_path_factory.mktemp("ckpts"))
  d = {name: os.path.join(root, name) for name in ("gpt2_generic", "gpt2", "llama_spm", "gemma_spm", "spm_generic")}
  d.update({name: os.path.join(root, name) for name in ("llama_json", "llama_legacy_json", "gemma_json")})
  d.update({name: os.path.join(root, name) for name in ("bert", "bert_cased", "clip_vocab", "clip_json")})

  bpe = _byte_level_bpe()
  end = "<|endoftext|>"
  transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=end, eos_token=end).save_pretrained(
    d["gpt2_generic"]
  )
  model = json.loads(bpe.to_str())["model"]
  transformers.GPT2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]]).save_pretrained(
    d["gpt2"]
  )

  llama, gemma = _sentencepiece(llama=True), _sentencepiece(llama=False)
  for name, proto, cls in (("llama_spm", llama, "LlamaTokenizer"), ("gemma_spm", gemma, "GemmaTokenizer")):
    _write(d[name], "tokenizer.model", proto)
    _write(d[name], "tokenizer_config.json", {"tokenizer_class": cls})
    AutoTokenizer.from_pretrained(d[name]).save_pretrained(d[name.replace("spm", "json")])
  _write(d["spm_generic"], "tokenizer.model", llama)

  # A Llama-2 style checkpoint: tokenizer.json with the legacy pipeline (Prepend normalizer, no pre-tokenizer), which
  # transformers 5's LlamaTokenizer replaces by its own Metaspace pipeline ("legacy": false, as Llama-2 repos say).
  shutil.copytree(d["llama_json"], d["llama_legacy_json"])
  path = os.path.join(d["llama_legacy_json"], "tokenizer.json")
  data = json.load(open(path, encoding="utf-8"))
  data["normalizer"] = {
    "type": "Sequence",
    "normalizers": [
      {"type": "Prepend", "prepend": "▁"},
      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
    ],
  }
  data["pre_tokenizer"] = None
  _write(d["llama_legacy_json"], "tokenizer.json", data)
  config = json.load(open(os.path.join(d["llama_legacy_json"], "tokenizer_config.json")))
  _write(d["llama_legacy_json"], "tokenizer_config.json", {**config, "legacy": False})

  _bert_vocab(d["bert"])
  transformers.BertTokenizer.from_pretrained(d["bert"]).save_pretrained(d["bert"])
  _bert_vocab(d["bert_cased"])
  transformers.BertTokenizer.from_pretrained(d["bert_cased"], do_lower_case=False).save_pretrained(d["bert_cased"])

  if _OPEN_CLIP is None:
    return {k: v for k, v in d.items() if not k.startswith("clip")}
  write_clip_vocab_files(_open_clip_bpe(), d["clip_vocab"])
  _write(d["clip_vocab"], "tokenizer_config.json", {"tokenizer_class": "CLIPTokenizer"})
  AutoTokenizer.from_pretrained(d["clip_vocab"]).save_pretrained(d["clip_json"])
  return d


@pytest.fixture(scope="module")
def refs(ckpts):
  return {name: AutoTokenizer.from_pretrained(path) for name, path in ckpts.items()}


@pytest.fixture(scope="module")
def ours(ckpts):
  return {name: load_tokenizer(path) for name, path in ckpts.items()}


_OPEN_CLIP = importlib.util.find_spec("open_clip")  # finds the package without importing it
needs_open_clip = pytest.mark.skipif(_OPEN_CLIP is None, reason="open_clip_torch (CLIP's BPE file) is not installed")
NAMES = [
  "gpt2_generic",
  "gpt2",
  "llama_spm",
  "llama_json",
  "llama_legacy_json",
  "gemma_spm",
  "gemma_json",
  "spm_generic",
  "bert",
  "bert_cased",
  pytest.param("clip_vocab", marks=needs_open_clip),
  pytest.param("clip_json", marks=needs_open_clip),
]


def _open_clip_bpe() -> str:
  return os.path.join(_OPEN_CLIP.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")


def _open_clip_simple_tokenizer():
  """open_clip's SimpleTokenizer. Its module is loaded by file: importing the package imports torchvision, whose
  build need not match the installed torch, and the tokenizer does not need it."""
  path = os.path.join(os.path.dirname(_open_clip_bpe()), "tokenizer.py")
  spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.SimpleTokenizer()


def _ref_ids(ref, text):
  return ref(text, add_special_tokens=False)["input_ids"]


# -- same ids and text as transformers -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_encode_matches_auto_tokenizer(name, ours, refs):
  tok, ref = ours[name], refs[name]
  assert isinstance(tok, HFTokenizer)
  assert tok.vocab_size == tok.text_vocab_size == len(ref)
  for text in STRINGS + SPECIAL_STRINGS:
    assert tok.encode(text) == _ref_ids(ref, text), (name, text)


@pytest.mark.parametrize("name", NAMES)
def test_decode_matches_auto_tokenizer(name, ours, refs):
  tok, ref = ours[name], refs[name]
  specials = {tok.bos_id, tok.eos_id, tok.pad_id}
  round_trips = 0
  for text in STRINGS:
    ids = _ref_ids(ref, text)
    if specials & set(ids):  # mmjax's decode stops at eos / drops bos and pad by design
      continue
    assert tok.decode(ids) == ref.decode(ids), (name, text)
    round_trips += ref.decode(ids) == text
  if name in LOSSLESS:
    # Byte-level BPE and byte-fallback SentencePiece lose nothing; transformers' Llama drops one leading space.
    lossy = [t for t in STRINGS if t.startswith(" ")] if name.startswith("llama") else []
    assert round_trips == len(STRINGS) - len(lossy), name


@pytest.mark.parametrize("name", NAMES)
def test_id_to_piece_matches(name, ours, refs):
  tok, ref = ours[name], refs[name]
  for i in (0, 1, tok.eos_id, tok.vocab_size - 1):
    assert tok.id_to_piece(i) == ref.convert_ids_to_tokens(i)
  with pytest.raises(IndexError, match="not in the vocabulary"):
    tok.id_to_piece(tok.vocab_size)


def test_llama_follows_transformers_not_sentencepiece(ours, refs, ckpts):
  """transformers 5's LlamaTokenizer prepends "▁" only to text not starting with a space, unlike SentencePiece and
  a legacy tokenizer.json: the ids follow AutoTokenizer, and the generic conversion (no class) follows SentencePiece."""
  sp = spm.SentencePieceProcessor(model_file=os.path.join(ckpts["llama_spm"], "tokenizer.model"))
  for name in ("llama_spm", "llama_json", "llama_legacy_json"):
    assert ours[name].encode(" leading space") == _ref_ids(refs[name], " leading space")
    assert ours[name].encode(" leading space") != sp.encode(" leading space")
  # Run as written, the legacy tokenizer.json would follow SentencePiece instead: the rebuild is what matches.
  as_written = tokenizers.Tokenizer.from_file(os.path.join(ckpts["llama_legacy_json"], "tokenizer.json"))
  assert as_written.encode(" leading space", add_special_tokens=False).ids == sp.encode(" leading space")
  for text in STRINGS:
    assert ours["spm_generic"].encode(text) == sp.encode(text), text
    assert ours["llama_spm"].encode(text.lstrip(" ")) == sp.encode(text.lstrip(" ")), text


# -- special ids -----------------------------------------------------------------------------------------------------

EXPECTED_SPECIALS = {
  # name: (bos, eos, pad, unk) token strings, and the fallbacks noted
  "gpt2_generic": (("<|endoftext|>",) * 3 + (None,), ("pad = eos",)),
  "gpt2": (("<|endoftext|>",) * 4, ("pad = eos",)),
  "llama_spm": (("<s>", "</s>", "</s>", "<unk>"), ("pad = eos",)),
  "llama_json": (("<s>", "</s>", "</s>", "<unk>"), ("pad = eos",)),
  "gemma_spm": (("<bos>", "<eos>", "<pad>", "<unk>"), ()),
  "gemma_json": (("<bos>", "<eos>", "<pad>", "<unk>"), ()),
  "spm_generic": (("<s>", "</s>", "</s>", "<unk>"), ("pad = eos",)),
  "bert": (("[CLS]", "[SEP]", "[PAD]", "[UNK]"), ("bos = cls", "eos = sep")),
  "clip_vocab": (("<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>"), ()),
}


@pytest.mark.parametrize(
  "name", [pytest.param(n, marks=needs_open_clip) if n.startswith("clip") else n for n in sorted(EXPECTED_SPECIALS)]
)
def test_special_ids(name, ours, refs):
  tok, ref = ours[name], refs[name]
  (bos, eos, pad, unk), fallbacks = EXPECTED_SPECIALS[name]
  assert tok.special_tokens == {k: v for k, v in dict(bos=bos, eos=eos, pad=pad, unk=unk).items() if v is not None}
  assert tok.unk_id == (None if unk is None else ref.convert_tokens_to_ids(unk))
  # Where the checkpoint names the token, the id is transformers' id for it.
  for role, ref_role in (("bos", "cls" if name == "bert" else "bos"), ("eos", "sep" if name == "bert" else "eos")):
    assert getattr(tok, f"{role}_id") == getattr(ref, f"{ref_role}_token_id")
  assert tok.pad_id == (ref.pad_token_id if ref.pad_token_id is not None else ref.eos_token_id)
  assert len(tok.notes) == len(fallbacks) and all(any(n.startswith(f) for n in tok.notes) for f in fallbacks), tok.notes


def test_gemma_adds_its_default_mask_token(ours, refs):
  """GemmaTokenizer's default <mask> is not in this SentencePiece model: transformers appends it, so do we (and the
  location ids come after it)."""
  for name in ("gemma_spm", "gemma_json"):
    assert ours[name].encode("<mask>") == _ref_ids(refs[name], "<mask>") == [ours[name].text_vocab_size - 1]


def test_special_tokens_map_and_config_json(tmp_path):
  bpe = _byte_level_bpe()
  base = str(tmp_path / "base")
  transformers.PreTrainedTokenizerFast(tokenizer_object=bpe).save_pretrained(base)
  end = bpe.token_to_id("<|endoftext|>")

  # No eos anywhere: a one-line error naming the file.
  with pytest.raises(ValueError, match=r"tokenizer\.json: no eos token"):
    load_tokenizer(base)

  # config.json fills in: eos_token_id as a list (Llama 3 instruct style) takes the first; bos from config too.
  _write(base, "config.json", {"model_type": "gpt2x", "eos_token_id": [end, 5], "bos_token_id": 7, "pad_token_id": 9})
  tok = load_tokenizer(base)
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (7, end, 9, None)
  assert len(tok.notes) == 3 and all("config.json" in n for n in tok.notes)

  # special_tokens_map.json overrides tokenizer_config.json when the latter has no added_tokens_decoder.
  legacy = str(tmp_path / "legacy")
  shutil.copytree(base, legacy)
  os.remove(os.path.join(legacy, "config.json"))
  _write(legacy, "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "e"})
  _write(legacy, "special_tokens_map.json", {"eos_token": {"content": "<|endoftext|>", "lstrip": False}})
  tok, ref = load_tokenizer(legacy), AutoTokenizer.from_pretrained(legacy)
  assert tok.eos_id == ref.eos_token_id == end
  assert tok.bos_id == tok.pad_id == end  # no bos nor pad: both eos
  # With an added_tokens_decoder, special_tokens_map.json is not read (transformers 5): the missing eos is added.
  decoder = {str(end): {"content": "<|endoftext|>", "special": True, "normalized": False}}
  _write(legacy, "tokenizer_config.json", {"eos_token": "<eos>", "added_tokens_decoder": decoder})
  tok, ref = load_tokenizer(legacy), AutoTokenizer.from_pretrained(legacy)
  assert tok.eos_id == ref.eos_token_id == len(ref) - 1 == tok.vocab_size - 1
  for text in STRINGS + ["x<eos>y"]:
    assert tok.encode(text) == _ref_ids(ref, text)


def test_truncation_and_padding_in_tokenizer_json_are_off(ckpts, tmp_path):
  """Some tokenizer.json files switch truncation / padding on (laion's CLIP: 77); AutoTokenizer does neither by
  default, and mmjax pads and truncates by itself."""
  path = str(tmp_path / "truncating")
  shutil.copytree(ckpts["gpt2_generic"], path)
  data = json.load(open(os.path.join(path, "tokenizer.json"), encoding="utf-8"))
  data["truncation"] = {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
  data["padding"] = {
    "strategy": {"Fixed": 40},
    "direction": "Right",
    "pad_to_multiple_of": None,
    "pad_id": 0,
    "pad_type_id": 0,
    "pad_token": "<|endoftext|>",
  }
  _write(path, "tokenizer.json", data)
  tok, ref = load_tokenizer(path), AutoTokenizer.from_pretrained(path)
  text = "The quick brown fox jumps over the lazy dog."
  assert tok.encode(text) == _ref_ids(ref, text) == load_tokenizer(ckpts["gpt2_generic"]).encode(text)
  assert 3 < len(tok.encode(text)) < 40


def test_legacy_added_tokens_json(ckpts, tmp_path):
  """A tokenizer.model checkpoint of the transformers 4.2x era: added_tokens.json and special_tokens_map.json."""
  path = str(tmp_path / "old_llama")
  shutil.copytree(ckpts["llama_spm"], path)
  size = spm.SentencePieceProcessor(model_file=os.path.join(path, "tokenizer.model")).get_piece_size()
  _write(path, "added_tokens.json", {"[PAD]": size, "<extra>": size + 1})
  _write(path, "special_tokens_map.json", {"pad_token": "[PAD]", "bos_token": "<s>"})
  tok, ref = load_tokenizer(path), AutoTokenizer.from_pretrained(path)
  assert (tok.pad_id, tok.vocab_size) == (ref.pad_token_id, len(ref)) == (size, size + 2)
  for text in STRINGS + ["a [PAD] b", "x<extra>y"]:
    assert tok.encode(text) == _ref_ids(ref, text), text


def test_bert_clean_up_tokenization_spaces(ckpts, tmp_path):
  """bert-base-uncased's config asks transformers to clean up spaces before punctuation on decode."""
  path = str(tmp_path / "bert_clean")
  shutil.copytree(ckpts["bert"], path)
  config = json.load(open(os.path.join(path, "tokenizer_config.json")))
  _write(path, "tokenizer_config.json", {**config, "clean_up_tokenization_spaces": True})
  tok, ref = load_tokenizer(path), AutoTokenizer.from_pretrained(path)
  for text in STRINGS + ["hello , world ! isn ' t it ?"]:
    ids = _ref_ids(ref, text)
    assert tok.decode(ids) == ref.decode(ids), text
  assert tok.decode(tok.encode("hello, world!")) == "hello, world!"


# -- decode conventions ----------------------------------------------------------------------------------------------


def test_decode_stops_at_eos_and_skips_pad_and_bos(ours):
  tok = ours["bert"]  # bos ([CLS]), eos ([SEP]) and pad ([PAD]) all distinct
  ids = tok.encode("hello world")
  b, e, p = tok.bos_id, tok.eos_id, tok.pad_id
  assert tok.decode([b] + ids + [e, p, p]) == "hello world"
  assert tok.decode([p, p, b] + ids + [e] + ids) == "hello world"
  assert tok.decode(ids[:1] + [p] + ids[1:]) == "hello world"
  assert tok.decode([e] + ids) == ""
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.decode(ids + [tok.vocab_size])


@pytest.mark.parametrize("name", ["gpt2_generic", "llama_json"])
def test_decode_when_bos_or_pad_is_eos(name, ours):
  """GPT-2: bos = eos = pad (<|endoftext|>); Llama: pad = eos. Leading ones are bos/padding, the next ends the text."""
  tok = ours[name]
  ids = tok.encode("Hello world")
  b, e, p = tok.bos_id, tok.eos_id, tok.pad_id
  assert p == e and (b == e) == (name == "gpt2_generic")
  assert tok.decode([b] + ids + [e] + ids) == "Hello world"
  assert tok.decode([p, p, b] + ids + [e, p, p]) == "Hello world"
  assert tok.decode(ids) == "Hello world"


# -- location tokens -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_location_tokens(name, ckpts, ours):
  n = 16
  plain = ours[name]
  tok = load_tokenizer(ckpts[name], location_bins=n)
  v = plain.vocab_size
  assert (tok.locations.first_id, tok.locations.num_bins, tok.vocab_size, tok.text_vocab_size) == (v, n, v + n, v)
  assert plain.backend.get_vocab_size(with_added_tokens=True) == v  # the plain tokenizer's backend is untouched
  # The reference: transformers' tokenizer with the same location tokens added as special tokens.
  ref = AutoTokenizer.from_pretrained(ckpts[name])
  ref.add_tokens([AddedToken(f"<loc{b:04d}>", special=True, normalized=False) for b in range(n)], special_tokens=True)
  assert ref.convert_tokens_to_ids("<loc0000>") == v
  for text in LOC_TEXTS:
    ids = tok.encode(text)
    assert ids == _ref_ids(ref, text), (name, text)
    assert tok.decode(ids) == ref.decode(ids)
    if name in LOSSLESS:
      assert tok.decode(ids) == text or (name.startswith("llama") and text.startswith(" "))
  ids = tok.encode(LOC_TEXTS[0])
  assert [i - v for i in ids if i >= v] == [1, 2, 10, 15, 0, 0, 3, 4]
  assert tok.locations.box(ids[:4]) == tok.locations.box([v + 1, v + 2, v + 10, v + 15])
  assert tok.id_to_piece(v + 3) == "<loc0003>"
  for text in STRINGS:  # text without location tokens: the same ids as without them
    assert tok.encode(text) == plain.encode(text)
  with pytest.raises(ValueError, match="<loc0016> is out of range"):
    tok.encode("a <loc0016> b")
  with pytest.raises(ValueError, match="<loc3> is misspelled"):
    tok.encode("a <loc3> b")
  # Without location bins, "<loc0003>" is ordinary text.
  assert v not in plain.encode("<loc0003>") and all(i < v for i in plain.encode("<loc0003>"))


def test_existing_location_tokens_are_reused(ckpts, tmp_path):
  """A vocabulary that already has <loc0000>.. (PaliGemma) keeps its ids; a partial set is an error."""
  path = str(tmp_path / "paligemma_like")
  ref = AutoTokenizer.from_pretrained(ckpts["gemma_json"])
  ref.add_tokens([AddedToken(f"<loc{b:04d}>", special=True, normalized=False) for b in range(32)], special_tokens=True)
  ref.save_pretrained(path)
  tok = load_tokenizer(path, location_bins=32)
  first = ref.convert_tokens_to_ids("<loc0000>")
  assert (tok.locations.first_id, tok.vocab_size) == (first, len(ref))
  assert tok.encode("x <loc0031>") == _ref_ids(ref, "x <loc0031>")
  assert load_tokenizer(path, location_bins=8).vocab_size == len(ref)
  with pytest.raises(ValueError, match="holds some location tokens"):
    load_tokenizer(path, location_bins=64)


@pytest.mark.parametrize("bins", [-1, 1.5, True, "4"])
def test_bad_location_bins(bins, ckpts):
  with pytest.raises(ValueError, match="location_bins must be an integer >= 0"):
    load_tokenizer(ckpts["gpt2"], location_bins=bins)


# -- CLIP --------------------------------------------------------------------------------------------------------------

OPEN_CLIP_STRINGS = [s for s in STRINGS if s.strip()] + ["a diagram of a CAT on a mat", "two  dogs\tplaying"]


@needs_open_clip
def test_clip_matches_open_clip(ckpts, ours):
  """Ids of open_clip's own tokenizer (lowercased, whitespace collapsed) from the open_clip BPE file, directly or as
  vocab.json + merges.txt; decode agrees up to the trailing space open_clip leaves."""
  oc = _open_clip_simple_tokenizer()
  from_gz = load_tokenizer(_open_clip_bpe())
  bare = str(ckpts["clip_vocab"]) + "_bare"  # vocab.json + merges.txt alone: CLIP found from the "</w>" merges
  os.makedirs(bare, exist_ok=True)
  for f in ("vocab.json", "merges.txt"):
    shutil.copy(os.path.join(ckpts["clip_vocab"], f), bare)
  from_bare = load_tokenizer(bare)
  assert from_gz.family == from_bare.family == "clip"
  assert (from_gz.bos_id, from_gz.eos_id, from_gz.vocab_size) == (oc.sot_token_id, oc.eot_token_id, oc.vocab_size)
  for text in OPEN_CLIP_STRINGS:
    ids = oc.encode(text)
    assert from_gz.encode(text) == from_bare.encode(text) == ours["clip_json"].encode(text) == ids, text
    assert from_gz.decode(ids) == oc.decode(ids).strip(), text
  # Known difference, on HF's side like transformers: open_clip also unescapes HTML entities (and runs ftfy).
  assert from_gz.encode("fish &amp; chips") != oc.encode("fish &amp; chips")


@needs_open_clip
def test_clip_vocab_is_hugging_faces(refs):
  vocab, merges = clip_vocab_and_merges(_open_clip_bpe())
  assert len(vocab) == 49408 and len(merges) == 48894
  assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"], vocab["!"], vocab["a</w>"]) == (49406, 49407, 0, 320)
  assert refs["clip_json"].get_vocab() == vocab


# -- errors ----------------------------------------------------------------------------------------------------------


def test_errors(tmp_path, ckpts):
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match=f"{missing}: no such tokenizer file"):
    load_tokenizer(missing)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=f"{empty}: no tokenizer here .*tokenizer.json, tokenizer.model"):
    load_tokenizer(empty)
  junk = tmp_path / "weights.bin"
  junk.write_bytes(b"\0\1")
  with pytest.raises(ValueError, match=f"{junk}: not a tokenizer file"):
    load_tokenizer(junk)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"bad/tokenizer\.json: not valid JSON"):
    load_tokenizer(bad)
  (bad / "tokenizer.json").write_text('{"model": {"type": "Nope"}}')
  with pytest.raises(ValueError, match=r"bad/tokenizer\.json: not a tokenizers tokenizer\.json"):
    load_tokenizer(bad)
  os.remove(bad / "tokenizer.json")
  (bad / "tokenizer.model").write_bytes(b"\xff\xfe not a model")
  with pytest.raises(ValueError, match=r"bad/tokenizer\.model: not a SentencePiece model"):
    load_tokenizer(bad)
  os.remove(bad / "tokenizer.model")
  _write(str(bad), "vocab.json", {"a": 0})
  with pytest.raises(FileNotFoundError, match=f"{bad}: no tokenizer here"):
    load_tokenizer(bad)
  with pytest.raises(FileNotFoundError, match="needs both vocab.json and merges.txt"):
    load_tokenizer(bad / "vocab.json")
  (bad / "bpe.txt.gz").write_bytes(b"not gzip")
  with pytest.raises(ValueError, match=r"bpe\.txt\.gz: cannot read CLIP's BPE merges"):
    load_tokenizer(bad / "bpe.txt.gz")


def test_file_paths_load_like_their_directory(ckpts, ours):
  cases = [("gpt2", "tokenizer.json"), ("llama_spm", "tokenizer.model")]
  for name, file in cases + ([("clip_vocab", "merges.txt")] if _OPEN_CLIP is not None else []):
    tok = load_tokenizer(os.path.join(ckpts[name], file))
    assert tok.path.endswith(file) and tok.family == ours[name].family
    assert [tok.encode(t) for t in STRINGS] == [ours[name].encode(t) for t in STRINGS]
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (
      ours[name].bos_id,
      ours[name].eos_id,
      ours[name].pad_id,
      ours[name].unk_id,
    )


@pytest.mark.parametrize(
  "name",
  [
    "llama_spm",
    "gemma_json",
    "bert",
    pytest.param("open_clip_bpe", marks=needs_open_clip),
    "renamed_json",
  ],
)
def test_save_and_load_back(name, ckpts, tmp_path):
  if name == "open_clip_bpe":
    source = _open_clip_bpe()
  elif name == "renamed_json":  # a tokenizer file under another name is saved as tokenizer.json
    source = str(tmp_path / "gpt2_tokenizer.json")
    shutil.copy(os.path.join(ckpts["gpt2"], "tokenizer.json"), source)
    shutil.copy(os.path.join(ckpts["gpt2"], "tokenizer_config.json"), tmp_path)
  elif name == "llama_spm":
    source = os.path.join(ckpts[name], "tokenizer.model")
  else:
    source = ckpts[name]
  tok = load_tokenizer(source, location_bins=16)
  written = tok.save(tmp_path / "saved")
  assert all(os.path.dirname(f) == str(tmp_path / "saved") for f in written)
  back = load_tokenizer(tmp_path / "saved", location_bins=16)
  assert (back.family, back.vocab_size, back.special_tokens) == (tok.family, tok.vocab_size, tok.special_tokens)
  for text in STRINGS + LOC_TEXTS:
    assert back.encode(text) == tok.encode(text), text
    assert back.decode(tok.encode(text)) == tok.decode(tok.encode(text)), text
  with pytest.raises(ValueError, match="no files to save"):
    HFTokenizer(tok.backend, bos_id=0, eos_id=0, pad_id=0, unk_id=None).save(tmp_path / "nothing")


def test_pickles(ckpts):
  """Data loader workers get the tokenizer pickled."""
  tok = load_tokenizer(ckpts["llama_json"], location_bins=16)
  back = pickle.loads(pickle.dumps(tok))
  for text in LOC_TEXTS + STRINGS:
    assert back.encode(text) == tok.encode(text)
  assert (back.vocab_size, back.locations, back.pad_id) == (tok.vocab_size, tok.locations, tok.pad_id)


def test_backend_is_not_shared(ours):
  """Adding location tokens works on a copy: the tokenizer passed in is left as it was."""
  backend = copy.deepcopy(ours["gpt2"].backend)
  size = backend.get_vocab_size(with_added_tokens=True)
  HFTokenizer(backend, bos_id=0, eos_id=0, pad_id=0, unk_id=None, location_bins=4)
  assert backend.get_vocab_size(with_added_tokens=True) == size
