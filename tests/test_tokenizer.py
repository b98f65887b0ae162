"""Tests for mmjax.tokenizer."""

import pytest

from mmjax.projects.shapes import scenes as shapes
from mmjax.tokenizer import Tokenizer


def _texts():
  texts = ["describe the image."] + shapes.vocabulary_texts()
  for i in range(60):
    s = shapes.generate_scene([0, 0, i])
    texts += s.questions + s.answers + [s.caption]
  return texts


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  d = tmp_path_factory.mktemp("tok")
  texts = _texts()
  return texts, Tokenizer.train(texts, d / "tokenizer.model", 512), d


def test_special_ids(trained):
  _, tok, _ = trained
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert 0 < tok.vocab_size <= 512


def test_round_trip_dataset_text_and_short(trained):
  texts, tok, _ = trained
  for t in texts:
    ids = tok.encode(t)
    assert all(i > 3 for i in ids)
    assert tok.decode(ids) == t
  # Near whole-word pieces on the template vocabulary.
  q = "what shape is the object closest to the red object?"
  assert len(tok.encode(q)) <= 12
  assert max(len(tok.encode(t)) for t in texts) <= 60


def test_byte_fallback_unicode(trained):
  _, tok, _ = trained
  for t in ["héllo wörld", "日本語のテキスト 😀", "Zürich ÆØÅ ﬁ", "tabs\tand  spaces", "€100 #$%^&*"]:
    assert tok.decode(tok.encode(t)) == t
    assert tok.unk_id not in tok.encode(t)


def test_decode_stops_at_eos_skips_pad_bos(trained):
  _, tok, _ = trained
  ids = tok.encode("red circle")
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id] + tok.encode("blue") + [0, 0]) == "red circle"
  assert tok.decode([0, 1] + ids + [0]) == "red circle"


def test_save_load_and_deterministic(trained, tmp_path):
  texts, tok, d = trained
  loaded = Tokenizer.load(d / "tokenizer.model")
  assert loaded.vocab_size == tok.vocab_size
  tok2 = Tokenizer.train(texts, tmp_path / "again.model", 512)
  assert (tmp_path / "again.model").read_bytes() == (d / "tokenizer.model").read_bytes()
  for t in texts[:50]:
    assert tok2.encode(t) == loaded.encode(t) == tok.encode(t)


def test_train_rejects_empty(tmp_path):
  with pytest.raises(ValueError):
    Tokenizer.train(["", "  "], tmp_path / "x.model", 512)
