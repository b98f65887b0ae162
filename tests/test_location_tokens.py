"""Location tokens in the tokenizer (mmjax.tokenizer with location_bins): reserved ids after the
SentencePiece pieces, "<locNNNN>" encoding and decoding, round trips on mixed text, the N = 0
tokenizer unchanged, errors for bad location tokens, save / load."""

import random
import re

import numpy as np
import pytest

from mmjax.location_tokens import LocationTokens
from mmjax.tokenizer import Tokenizer

TEXTS = [
  "describe the image.",
  "a red circle and a blue square.",
  "the dog is left of the cat ; the cat sits on a mat",
  "detect red circle ; dog ; cat ; blue square",
  "what shape is the object closest to the red object?",
  "there are three objects: a green triangle, a red circle and a dog.",
  "find the small cat",
] * 3

WORDS = ["red", "circle", "dog", "cat", "the", "blue square", "détecté", "日本", "😀", ";", ".", "x"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
  d = tmp_path_factory.mktemp("loctok")
  return Tokenizer.train(TEXTS, d / "tokenizer.model", 300)


def with_bins(plain, n):
  return Tokenizer(plain.model_proto, None, location_bins=n)


@pytest.mark.parametrize("n", [16, 1024])
def test_location_ids_follow_the_sentencepiece_pieces(plain, n):
  tok = with_bins(plain, n)
  sp = plain.vocab_size
  assert tok.vocab_size == sp + n
  assert tok.locations == LocationTokens(num_bins=n, first_id=sp) and tok.location_bins == n
  for b in {0, 1, n // 2, n - 1}:
    text = f"<loc{b:04d}>"
    assert tok.encode(text) == [sp + b]
    assert sp <= tok.encode(text)[0] < tok.vocab_size
    assert tok.decode([sp + b]) == text and tok.id_to_piece(sp + b) == text
  # Text ids stay below the SentencePiece size and are the plain tokenizer's pieces.
  for t in TEXTS:
    assert tok.encode(t) == plain.encode(t)
    assert all(i < sp for i in tok.encode(t))
  assert tok.id_to_piece(5) == plain.id_to_piece(5)
  assert "location_bins" in repr(tok) and "location_bins" not in repr(plain)


def test_train_with_location_bins(plain, tmp_path):
  tok = Tokenizer.train(TEXTS, tmp_path / "t.model", 300, location_bins=16)
  assert (tmp_path / "t.model").read_bytes() == plain.model_proto  # N is not in the model file
  assert tok.vocab_size == plain.vocab_size + 16 and tok.encode("<loc0003> dog")[0] == plain.vocab_size + 3


def _ids_of_locations(tok, text):
  return [tok.locations.first_id + int(d) for d in re.findall(r"<loc(\d{4})>", text)]


MIXED = [
  "<loc0010><loc0020><loc0500><loc0600> red circle ; <loc0001><loc0002><loc0003><loc0004> dog",
  "<loc0000><loc0000><loc1023><loc1023>",
  "find the dog <loc0100><loc0200><loc0300><loc0400> dog",
  "<loc0010><loc0020><loc0030><loc0040>dog;<loc0001><loc0002><loc0003><loc0004>  cat  ",
  "détecté <loc0007> 日本 😀<loc0008>\t<loc0009>",
  " leading space <loc0001>",
  "<loc0005> ",
]


@pytest.mark.parametrize("n", [1024])
@pytest.mark.parametrize("text", MIXED)
def test_round_trip_mixed_text(plain, n, text):
  tok = with_bins(plain, n)
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  # Location ids appear in order, one per "<locNNNN>"; everything else is text ids.
  assert [i for i in ids if i >= plain.vocab_size] == _ids_of_locations(tok, text)
  assert tok.unk_id not in ids
  # The text before the first location token is encoded exactly as without location tokens.
  head = text.split("<loc")[0]
  assert ids[: len(plain.encode(head))] == plain.encode(head)


@pytest.mark.parametrize("n", [16, 1024])
def test_random_round_trips(plain, n):
  tok = with_bins(plain, n)
  rng = random.Random(n)
  for _ in range(300):
    parts = []
    for _ in range(rng.randint(0, 8)):
      if rng.random() < 0.5:
        parts.append("".join(f"<loc{rng.randrange(n):04d}>" for _ in range(rng.choice([1, 4, 4, 2]))))
      else:
        parts.append(" " * rng.randint(0, 2) + rng.choice(WORDS) + " " * rng.randint(0, 2))
    text = "".join(parts)
    ids = tok.encode(text)
    assert tok.decode(ids) == text, (text, ids)
    assert [i for i in ids if i >= plain.vocab_size] == _ids_of_locations(tok, text)


def test_space_after_a_location_token_is_the_next_pieces(plain):
  tok = with_bins(plain, 16)
  loc = tok.locations.first_id
  # A model that emits the usual word pieces ("▁dog") after a box: the "▁" is decoded as one space.
  assert tok.decode([loc + 1, loc + 2] + plain.encode("dog")) == "<loc0001><loc0002> dog"
  assert plain.id_to_piece(plain.encode("dog")[0]).startswith("▁")
  # And encoding " dog" after a location token gives back word pieces whose first one carries the space.
  after = tok.encode("<loc0001> dog")[1:]
  assert tok.id_to_piece(after[0]).startswith("▁") and "".join(map(tok.id_to_piece, after)) == "▁dog"
  # No space: no "▁" at all.
  assert "▁" not in "".join(map(tok.id_to_piece, tok.encode("<loc0001>dog")[1:]))


def test_decode_skips_specials_and_stops_at_eos(plain):
  tok = with_bins(plain, 16)
  loc = tok.locations.first_id
  ids = [tok.bos_id, loc, loc + 1, loc + 2, loc + 15] + tok.encode("<loc0000> cat")[1:] + [tok.eos_id, loc, 0]
  assert tok.decode(ids) == "<loc0000><loc0001><loc0002><loc0015> cat"
  assert tok.decode([0, 0, tok.bos_id]) == ""


def test_without_location_bins_nothing_changes(plain):
  tok0 = Tokenizer(plain.model_proto, None, location_bins=0)
  assert tok0.locations is None and tok0.vocab_size == plain.vocab_size
  texts = TEXTS + MIXED + ["<loc9999>", "<loc12> dog"]
  for t in texts:  # "<locNNNN>" is ordinary text here
    assert tok0.encode(t) == plain.encode(t)
    assert tok0.decode(tok0.encode(t)) == plain.decode(plain.encode(t))
    assert all(i < plain.vocab_size for i in tok0.encode(t))
  assert tok0.decode(tok0.encode("<loc9999>")) == "<loc9999>"


@pytest.mark.parametrize(
  "n, text, token",
  [
    (1024, "<loc9999>", "<loc9999>"),
    (1024, "dog <loc0001><loc1024><loc0002><loc0003>", "<loc1024>"),
    (16, "<loc0016> cat", "<loc0016>"),
    (1024, "<loc12> dog", "<loc12>"),  # not PaliGemma's spelling (4 digits)
    (16, "<loc00001>", "<loc00001>"),
  ],
)
def test_bad_location_token_is_a_one_line_error(plain, n, text, token):
  tok = with_bins(plain, n)
  with pytest.raises(ValueError) as e:
    tok.encode(text)
  msg = str(e.value)
  assert token in msg and str(n) in msg and "\n" not in msg


def test_bad_location_bins():
  for bad in (-1, 1.5, True):
    with pytest.raises(ValueError, match="location_bins"):
      Tokenizer(Tokenizer.train(TEXTS, None, 300).model_proto, None, location_bins=bad)


def test_save_load_keeps_n_when_passed(plain, tmp_path):
  tok = with_bins(plain, 1024)
  tok.save(tmp_path / "m.model")
  loaded = Tokenizer.load(tmp_path / "m.model", location_bins=1024)
  assert loaded.vocab_size == tok.vocab_size and loaded.locations == tok.locations
  for t in MIXED:
    assert loaded.encode(t) == tok.encode(t)
  # N is not in the file: loading without it gives the plain tokenizer.
  bare = Tokenizer.load(tmp_path / "m.model")
  assert bare.locations is None and bare.vocab_size == plain.vocab_size


def test_parse_of_decoded_detection_text(plain):
  tok = with_bins(plain, 1024)
  rng = np.random.default_rng(0)
  for _ in range(20):
    ys, xs = np.sort(rng.random((3, 2)), 1), np.sort(rng.random((3, 2)), 1)
    bxs = np.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], 1)
    labels = [str(w) for w in rng.choice(["dog", "red circle", "cat", "blue square"], 3)]
    ids = []
    for i, (b, l) in enumerate(zip(bxs, labels)):
      ids += tok.locations.token_ids(b) + tok.encode(f"<loc0000> {l}")[1:]
      if i < 2:
        ids += tok.encode("<loc0000> ;")[1:]
    parsed = tok.locations.parse(tok.decode(ids + [tok.eos_id]))
    assert [l for l, _ in parsed] == labels
    for (_, got), want in zip(parsed, bxs):
      assert np.max(np.abs(np.array(got) - want)) <= 1 / 2048 + 1e-9


def test_config_location_bins_reach_the_tokenizer_model_and_decoding(tiny_config, tmp_path):
  """config.data.location_bins: the run's tokenizer has N location ids after its pieces (the same
  SentencePiece file as without them), the model's vocabulary includes them, decoding is
  constrained to them inside a box, and a workdir's tokenizer reloads with the run's N."""
  from mmjax.data import pipeline
  from mmjax.sample.generate import options_from_config
  from mmjax.train import state as state_lib

  plain = pipeline.Data(tiny_config).tokenizer
  tiny_config.data.location_bins = 16
  data = pipeline.Data(tiny_config)
  tok = data.tokenizer
  assert tok.model_proto == plain.model_proto and tok.vocab_size == plain.vocab_size + 16
  assert tok.encode("<loc0003>") == [plain.vocab_size + 3]
  assert options_from_config(tiny_config, tok).location_range == (plain.vocab_size, plain.vocab_size + 16)
  setup = state_lib.make_setup(tiny_config, tok.vocab_size)
  assert setup.model.vocab_size == plain.vocab_size + 16
  path = tmp_path / "tokenizer.model"
  tok.save(path)
  again = pipeline.Data(tiny_config, tokenizer_path=str(path)).tokenizer
  assert again.vocab_size == tok.vocab_size and again.decode(again.encode("<loc0015> x")) == "<loc0015> x"


def test_phrase_tags_are_one_piece_when_the_texts_have_them(plain):
  """Grounded text's phrase tags: one piece each (not '<', 'phrase', '>'), and only when trained on."""
  texts = [
    f"<phrase>a {c} dog</phrase> runs to the {s}" for c in ("black", "white", "brown") for s in ("left", "right")
  ]
  tok = Tokenizer.train(texts * 20, None, vocab_size=300, location_bins=8)
  text = "<phrase>a white dog</phrase><loc0001><loc0002><loc0003><loc0004> runs"
  ids = tok.encode(text)
  pieces = [tok.id_to_piece(i) for i in ids]
  assert pieces.count("<phrase>") == 1 and pieces.count("</phrase>") == 1, pieces
  assert tok.decode(ids) == text
  plain_pieces = {plain.id_to_piece(i) for i in range(plain.vocab_size)}
  assert "<phrase>" not in plain_pieces and "</phrase>" not in plain_pieces
