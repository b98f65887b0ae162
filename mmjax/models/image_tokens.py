"""Text-to-image through the causal decoder (Parti / Chameleon style): images become discrete tokens of
a VQ tokenizer trained here, appended to the decoder's vocabulary, so that one decoder both draws an
image from a caption and captions an image.

  model = TextToImageTokens(config.model, vocab_size)   # config.model: image_tokenizer, decoder, ...

Vocabulary: the text tokenizer's `vocab_size` ids, then the K = image_tokenizer.codebook_size image
codes (id = vocab_size + code), then BOI (begin of image, vocab_size + K), padded to a multiple of 128.
The decoder is mmjax.decoders.lm.Decoder over all of them. With a finite scalar quantizer
(image_tokenizer.quantizer "fsq") and config.model.factored_codes, a code's embedding, and so its
logit, is a sum over the code's digits (one per FSQ dimension; mmjax.layers.Embed's factored_levels):
the decoder predicts each dimension's level, and can draw a code whose combination of levels no
training image produced.

Sequences (Conditioning.prefix is the decoder's own embedding of [BOS, caption], read bidirectionally
as in PaliGemma's prefix-LM; its padding, past 1 + caption length, is masked out):
  draw     prefix [BOS, c_1 .. c_n]  tokens [BOI, i_1 .. i_N]       -> predicts i_1 .. i_N
  caption  prefix [BOS]              tokens [BOI, i_1 .. i_N, c_1 .. c_n, EOS] -> also the caption
With config.model.image_decoding = "masked" (MaskGIT, Chang et al. 2022; Show-o's mixed attention) the
draw rows read their image block bidirectionally instead: tokens [BOI, m_1 .. m_N], where a cosine-
scheduled random share of the codes is replaced by MASK (one more id, after BOI), and the logits at
the masked positions predict their codes; sampling then fills all N codes in a few parallel steps,
the surest first (mmjax.sample.image_tokens.fill_codes). The captioning rows stay causal.
The draw rows whose caption is dropped (config.model.cond_dropout, for classifier-free guidance) and
the caption rows share the null condition [BOS]: the unconditional image model is the start of the
captioning sequence. config.model.caption_fraction of the rows train the captioning direction; at 0
the sequences stop after the image.

Training (`loss_sums`) fits the VQ tokenizer and the decoder together, in one objective: the decoder
reads the tokenizer's current codes as fixed targets (no gradient flows from the decoder into the
tokenizer), and the tokenizer its reconstruction, codebook and commitment losses (weighted by
config.model.vq_weight). On simple images the codes settle within a few hundred steps, so one run of
the one trainer trains both, with no stage to orchestrate. Sampling (mmjax.sample.image_tokens)
generates the N codes autoregressively with a KV cache and decodes them with the tokenizer.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmjax.decoders.lm import Decoder
from mmjax.encoders.vq import VQTokenizer, codebook_usage, grid_shape
from mmjax.fusion.base import Conditioning
from mmjax.models import flow_matching
from mmjax.models.contrastive import caption_tokens
from mmjax.models.text_to_image import check_caption_config, to_model_space
from mmjax.tokenizer import BOS_ID, PAD_ID

VOCAB_MULTIPLE = 128
IMAGE_DECODINGS = ("causal", "masked")


def is_masked(model_config) -> bool:
  """Whether the model draws MaskGIT-style (config.model.image_decoding "masked"; saved configs from
  before the key draw causally)."""
  return str(model_config.get("image_decoding", "causal")) == "masked"


def masked_fraction(r: jax.Array) -> jax.Array:
  """MaskGIT's cosine schedule: the share of the codes still masked at progress r in [0, 1] (1 at the
  start of drawing, 0 at its end); training masks the share at a uniform random r."""
  return jnp.cos(0.5 * jnp.pi * r)


def num_codes(model_config, image_size: int) -> int:
  """N, the codes of one image: (image_size / patch_size)^2."""
  h, w = grid_shape(image_size, int(model_config.image_tokenizer.get("patch_size", VQTokenizer.patch_size)))
  return h * w


def positions_needed(model_config, image_size: int) -> int:
  """Decoder positions of the longest sequence: the prefix (1 + caption_len) + BOI + N codes (+ the
  caption and EOS when caption_fraction > 0)."""
  caption_len = int(model_config.caption_len)
  tail = caption_len + 1 if float(model_config.caption_fraction) > 0 else 0
  return 1 + caption_len + 1 + num_codes(model_config, image_size) + tail


class TextToImageTokens(nn.Module):
  """VQ tokenizer (config.model.image_tokenizer: VQTokenizer fields) + Decoder (config.model.decoder).

  config keys: image_tokenizer, decoder, factored_codes, caption_len (the prefix's caption slots: every prompt is
  padded to it, so that the image codes sit at the same positions in training and sampling),
  image_decoding (IMAGE_DECODINGS: "causal" raster order, "masked" MaskGIT), cond_dropout,
  caption_fraction, vq_weight, dtype, attention_implementation, remat, scan_layers.
  """

  config: ml_collections.ConfigDict
  vocab_size: int  # the text tokenizer's

  # Model-kind hooks (mmjax.models.kind).
  evaluator = "t2i"
  image_sampler = "tokens"  # mmjax.sample.text_to_image: autoregressive codes, then the VQ decoder
  train_tasks = ("caption",)
  progress_metric = "image_token_accuracy"
  accumulates_gradients = True

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    m = config.model
    check_drawing_config(config, "image_tokenizer", int(m.image_tokenizer.get("patch_size", VQTokenizer.patch_size)))
    needed = positions_needed(m, int(config.data.image_size))
    if int(m.decoder.max_len) < needed:
      raise ValueError(
        f"config.model.decoder.max_len={m.decoder.max_len} < {needed} positions: [BOS, caption] "
        f"({1 + int(m.caption_len)}) + BOI + the image's codes"
        + (" + caption and EOS (caption_fraction > 0)" if float(m.caption_fraction) > 0 else "")
        + f"; set config.model.decoder.max_len to at least {needed}."
      )
    decoding = str(m.get("image_decoding", "causal"))
    if decoding not in IMAGE_DECODINGS:
      raise ValueError(f"config.model.image_decoding={decoding!r}: use one of {IMAGE_DECODINGS}.")
    quantizer = str(m.image_tokenizer.get("quantizer", VQTokenizer.quantizer))
    if bool(m.get("factored_codes", False)) and quantizer != "fsq":
      raise ValueError(
        f"config.model.factored_codes factors codes over FSQ dimensions; config.model.image_tokenizer.quantizer="
        f"{quantizer!r} has none: set quantizer='fsq' or factored_codes=False."
      )
    if not 0.0 <= float(m.caption_fraction) < 1.0:
      raise ValueError(f"config.model.caption_fraction={m.caption_fraction} must be in [0, 1).")

  @staticmethod
  def batch_keys(model_config) -> tuple[str, ...]:
    return ("image", "target_out", "target_mask")

  @staticmethod
  def init_inputs(model_config, batch) -> tuple[tuple, dict]:
    return (to_model_space(batch["image"]), *caption_tokens(batch["target_out"], batch["target_mask"])), {}

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    self.image_tokenizer = VQTokenizer(**c.image_tokenizer.to_dict(), dtype=dtype)
    self.decoder = Decoder(
      self.total_vocab,
      **c.decoder.to_dict(),
      implementation=c.attention_implementation,
      dtype=dtype,
      remat=str(c.remat),
      scan_layers=bool(c.scan_layers),
      **self._factored(),
    )

  def _factored(self) -> dict:
    """The decoder's factored block (config.model.factored_codes): the code ids, by their FSQ digits."""
    if not bool(self.config.get("factored_codes", False)):
      return {}
    levels = tuple(int(v) for v in self.config.image_tokenizer.get("fsq_levels", VQTokenizer.fsq_levels))
    return dict(factored_start=self.first_image_id, factored_levels=levels)

  @staticmethod
  def max_prompt_len(model_config) -> int:
    """The most caption tokens a prompt may have."""
    return int(model_config.caption_len)

  def num_codes(self, image_size: int) -> int:
    return num_codes(self.config, image_size)

  @property
  def codebook_size(self) -> int:
    return int(self.config.image_tokenizer.get("codebook_size", VQTokenizer.codebook_size))

  @property
  def first_image_id(self) -> int:
    return self.vocab_size

  @property
  def boi_id(self) -> int:
    return self.vocab_size + self.codebook_size

  @property
  def mask_id(self) -> int:
    """MASK, the id of a code not drawn yet (masked decoding only)."""
    return self.boi_id + 1

  @property
  def total_vocab(self) -> int:
    """The decoder's vocabulary: text, codes, BOI (and MASK when masked), rounded up to a multiple of
    VOCAB_MULTIPLE so that its table splits over the mesh's tensor axis (the unused ids are never
    targets: training pushes their logits down, and drawing reads the code ids alone)."""
    used = self.vocab_size + self.codebook_size + 1 + int(is_masked(self.config))
    return -(-used // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

  def condition(self, tokens, lengths) -> Conditioning:
    """The decoder's caption prefix (`caption_prefix`)."""
    return caption_prefix(self.decoder, tokens, lengths, int(self.config.caption_len))

  def decode(self, tokens, cond: Conditioning, start):
    """One KV-cache decoding call of the decoder (mmjax.sample.image_tokens)."""
    return self.decoder(tokens, cond, start=start, decode=True)

  def fill_logits(self, ids, cond: Conditioning):
    """Masked decoding's forward: ids [B, N] (decoder ids: first_image_id + code, or mask_id where the
    code is not drawn yet) -> logits [B, N, V] at the image's positions, [BOI, ids] read bidirectionally
    after the prefix."""
    b, n = ids.shape
    seq = jnp.concatenate([jnp.full((b, 1), self.boi_id, jnp.int32), ids.astype(jnp.int32)], axis=1)
    return self.decoder(seq, cond, bidirectional=jnp.full((b,), n + 1, jnp.int32))[:, 1:]

  def index_logits(self, codes, tokens, lengths):
    """Teacher-forced logits [B, N, K] over the K codes of a causal model's codes int [B, N] given
    captions (lengths 0: the null condition), as draw_codes restricts them (mmjax.sample.rerank)."""
    if is_masked(self.config):
      raise ValueError("index_logits: a masked (MaskGIT) model draws codes in parallel; no causal order to score.")
    first = self.first_image_id
    seq = jnp.concatenate([jnp.full((codes.shape[0], 1), self.boi_id, jnp.int32), first + codes[:, :-1]], axis=1)
    return self.decoder(seq.astype(jnp.int32), self.condition(tokens, lengths))[..., first : first + self.codebook_size]

  def decode_image(self, codes, image_size: int):
    """Codes [B, N] -> float32 images [B, S, S, 3] in model space ([-1, 1])."""
    return self.image_tokenizer.decode(codes, grid_shape(image_size, self.image_tokenizer.patch_size))

  def encode_image(self, x):
    """Model-space images [B, S, S, 3] -> codes int32 [B, N]."""
    return self.image_tokenizer.encode(x)

  def __call__(self, x, tokens, lengths):
    """The draw direction's logits [B, 1 + N, V] for images x (model space) and their captions (the
    tokenizer's whole forward runs, so that init creates its decoder too)."""
    _, codes, _ = self.image_tokenizer(x)
    seq = jnp.concatenate([jnp.full((x.shape[0], 1), self.boi_id, jnp.int32), self.first_image_id + codes], axis=1)
    return self.decoder(seq[:, :-1], self.condition(tokens, lengths))

  def loss_sums(self, batch) -> tuple:
    """Per example: the mean cross-entropy of its image codes (causal: every code; masked: the masked
    ones, on draw rows only) + of its caption tokens and EOS on captioning rows + vq_weight x
    (reconstruction MSE + codebook + commitment terms), summed over the examples that have a caption,
    weight = their count. Also the codes' accuracy on the conditioned draw rows, the tokenizer's terms
    and its codebook usage over the batch."""
    c = self.config
    x0 = to_model_space(batch["image"])
    tokens, lengths = caption_tokens(batch["target_out"], batch["target_mask"])
    b = x0.shape[0]
    valid = (lengths > 0).astype(jnp.float32)
    _, codes, vq = self.image_tokenizer(x0)
    codes = jax.lax.stop_gradient(codes)
    n = codes.shape[1]
    rng = self.make_rng("sample")
    k_dir, k_drop = jax.random.split(rng)
    captioning = jax.random.bernoulli(k_dir, float(c.caption_fraction), (b,))
    cond_len, dropped = flow_matching.drop_condition(k_drop, lengths, float(c.cond_dropout))
    cond_len = jnp.where(captioning, 0, cond_len)

    code_ids = self.first_image_id + codes
    image_seq = jnp.concatenate([jnp.full((b, 1), self.boi_id, jnp.int32), code_ids], axis=1)
    if float(c.caption_fraction) > 0:
      # [BOI, i_1..i_N, c_1..c_n, EOS, pad..]; target_out already holds [c_1..c_n, EOS, pad..].
      text = jnp.where(captioning[:, None], batch["target_out"], PAD_ID).astype(jnp.int32)
      seq = jnp.concatenate([image_seq, text], axis=1)
      text_w = jnp.where(captioning[:, None], batch["target_mask"], 0.0).astype(jnp.float32)
    else:
      seq, text_w = image_seq, jnp.zeros((b, 0), jnp.float32)
    # Causal rows read seq[:, :-1] and predict seq[:, 1:]: the codes at positions 0..N-1.
    inputs, targets = seq[:, :-1], seq[:, 1:]
    image_pos, image_w, bidirectional = slice(0, n), jnp.ones((b, n), jnp.float32), None
    if is_masked(c):
      # Draw rows read [BOI, codes with a share masked] bidirectionally and predict the masked codes
      # where they stand (positions 1..N); the captioning rows keep their causal sequence.
      hidden = _random_mask(jax.random.fold_in(rng, 2), b, n)
      draw_in = jnp.concatenate([image_seq[:, :1], jnp.where(hidden, self.mask_id, code_ids)], axis=1)
      draw_out = jnp.concatenate([jnp.full((b, 1), PAD_ID, jnp.int32), code_ids], axis=1)
      if float(c.caption_fraction) > 0:  # caption rows are N + L long (L >= 1): pad the draw rows to it
        pad = ((0, 0), (0, inputs.shape[1] - n - 1))
        draw_in, draw_out = (jnp.pad(a, pad, constant_values=PAD_ID) for a in (draw_in, draw_out))
        inputs = jnp.where(captioning[:, None], inputs, draw_in)
        targets = jnp.where(captioning[:, None], targets, draw_out)
      else:  # no caption rows: [BOI, codes] is the whole sequence
        inputs, targets = draw_in, draw_out
      image_pos = slice(1, n + 1)
      image_w = hidden * (1.0 - captioning[:, None])
      bidirectional = jnp.where(captioning, 0, n + 1).astype(jnp.int32)
    logits = self.decoder(inputs, self.condition(tokens, cond_len), bidirectional=bidirectional)
    xent = self.decoder.xent(logits, targets)
    image_xent = jnp.sum(xent[:, image_pos] * image_w, axis=-1) / jnp.maximum(jnp.sum(image_w, axis=-1), 1.0)
    text_count = jnp.sum(text_w, axis=-1)
    text_xent = jnp.sum(xent[:, n:] * text_w, axis=-1) / jnp.maximum(text_count, 1.0)
    vq_loss = vq["recon_mse"] + vq["codebook"] + vq["commitment"]
    per = image_xent + text_xent + float(c.vq_weight) * vq_loss
    correct = (jnp.argmax(logits[:, image_pos], axis=-1) == code_ids).astype(jnp.float32)
    accuracy = jnp.sum(correct * image_w, axis=-1) / jnp.maximum(jnp.sum(image_w, axis=-1), 1.0)
    drawn = valid * (1.0 - captioning) * (1.0 - dropped)
    usage = codebook_usage(codes, self.codebook_size)
    weight = jnp.sum(valid)
    sums = {
      "image_token_accuracy": jnp.sum(drawn * accuracy) * weight / jnp.maximum(jnp.sum(drawn), 1.0),
      "image_xent": jnp.sum(valid * image_xent),
      "caption_xent": jnp.sum(valid * captioning * text_xent) * weight / jnp.maximum(jnp.sum(valid * captioning), 1.0),
      "vq_recon_mse": jnp.sum(valid * vq["recon_mse"]),
      "vq_commitment": jnp.sum(valid * vq["commitment"]),
      "codebook_used_fraction": usage["used_fraction"] * weight,
      "codebook_perplexity": usage["perplexity"] * weight,
      "weight": weight,
    }
    return jnp.sum(valid * per), sums


def check_drawing_config(config: ml_collections.ConfigDict, block: str, patch: int) -> None:
  """The start-up errors of a kind whose decoder draws an image patch by patch after a caption prefix
  (check_caption_config's, the image size a multiple of config.model.<block>.patch_size, whole
  captions in the prefix)."""
  m = config.model
  check_caption_config(config)
  if int(config.data.image_size) % patch:
    raise ValueError(
      f"config.data.image_size={config.data.image_size} is not a multiple of config.model.{block}.patch_size={patch}."
    )
  if int(m.caption_len) < int(config.data.max_target_len):
    raise ValueError(
      f"config.model.caption_len={m.caption_len} < config.data.max_target_len={config.data.max_target_len}: the "
      "prefix holds whole captions; set config.model.caption_len to at least max_target_len."
    )


def _caption_embeddings(decoder: Decoder, tokens, slots: int) -> jax.Array:
  """[B, 1 + slots, D]: BOS and the caption tokens [B, L] (no BOS / EOS; L <= slots) padded to `slots`,
  embedded by the decoder's own table (scaled as its tokens are). BOS is only a start marker here."""
  b, n = tokens.shape
  if n > slots:
    raise ValueError(f"{n} caption tokens exceed config.model.caption_len={slots}.")
  tokens = jnp.pad(tokens.astype(jnp.int32), ((0, 0), (0, slots - n)), constant_values=PAD_ID)
  emb = decoder.embed(jnp.concatenate([jnp.full((b, 1), BOS_ID, jnp.int32), tokens], axis=1))
  if decoder.scale_embeddings:
    emb = emb * jnp.asarray(decoder.width**0.5, emb.dtype)
  return emb


def caption_prefix(decoder: Decoder, tokens, lengths, slots: int) -> Conditioning:
  """Caption tokens [B, L] (no BOS / EOS; L <= slots) with lengths [B] (0: the null condition) -> the
  prefix [BOS, caption] embedded by the decoder's own table: P = 1 + slots positions (every caption
  padded to them, so that the image sits at the same positions in training and sampling), the first
  1 + length of them valid."""
  emb = _caption_embeddings(decoder, tokens, slots)
  return Conditioning(prefix=emb, prefix_len=1 + lengths.astype(jnp.int32))


def caption_memory(decoder: Decoder, tokens, lengths, slots: int, posemb) -> Conditioning:
  """Caption tokens [B, L] with lengths [B] (0: the null condition) -> a Conditioning whose prefix is
  [BOS] alone and whose memory, read by the decoder's cross-attention layers, is the caption's token
  embeddings plus `posemb` [slots, D]: every word stays its own vector at every layer, never mixed with
  its neighbours (the prefix's words attend to each other), so that the image positions meet each word
  on its own. The null condition is an empty memory (a fully masked cross-attention row adds nothing)."""
  emb = _caption_embeddings(decoder, tokens, slots)
  memory = emb[:, 1:] + posemb[None].astype(emb.dtype)
  b = emb.shape[0]
  return Conditioning(
    prefix=emb[:, :1], prefix_len=jnp.ones((b,), jnp.int32), memory=memory, memory_len=lengths.astype(jnp.int32)
  )


def _random_mask(rng, b: int, n: int) -> jax.Array:
  """bool [B, N]: per row, ceil(masked_fraction(r) * N) codes (at least one) at random positions, r
  uniform in [0, 1): every stage of drawing, from all masked to one left, is trained."""
  k_r, k_pos = jax.random.split(rng)
  count = jnp.clip(jnp.ceil(masked_fraction(jax.random.uniform(k_r, (b,))) * n), 1, n)
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(k_pos, (b, n)), axis=-1), axis=-1)
  return rank < count[:, None]
