"""Location tokens: the ids a decoder emits for box coordinates (Kosmos-2 / PaliGemma style).

This is the one implementation of box quantisation and of the location-token vocabulary; it sits on
the lowest floor (plain numpy / Python, no JAX, no dataset) so that the tokenizer can use it.
`mmjax.data.boxes` re-exports everything here and adds box validation (`normalize_box`).

* A box is [y0, x0, y1, x1], normalised to [0, 1] (see mmjax.data.boxes for the conventions).
* Quantisation: with N bins, bin i covers [i/N, (i+1)/N), and 1.0 (the right or bottom edge) goes to
  bin N-1. A bin decodes to its centre (i + 0.5)/N, so the round trip is off by at most 1/(2N) per
  coordinate.
* Location tokens are `num_bins` ids reserved in the decoder's vocabulary, written "<loc0012>" in
  text with at least 4 digits (PaliGemma's spelling). A detection output is a sequence of objects
  separated by " ; ", each 4 location tokens followed by its label.
* Boxes in a dataset's text are written in *markup*, `<box>y0 x0 y1 x1</box>` with exact normalised
  coordinates, so that prepared data does not depend on the bin count: `LocationTokens.render` turns
  each into the 4 location tokens of the run's N bins, and `parse` / `phrases` read both forms (the
  model's location tokens, bin centres; a reference's markup, exact).
* Grounded text conventions (the same for every dataset, so one parser scores them all):
  - detection / referring (PaliGemma): `detection_text`, objects joined by " ; ", each its box then
    its label ("<box>..</box> dog ; <box>..</box> cat"); a referring answer is one box alone;
  - grounded phrases (Kosmos-2): `phrase_text`, a phrase in `<phrase>..</phrase>` followed by its
    box, inside running text ("<phrase>a black dog</phrase><box>..</box> on the grass, ...").
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from typing import Sequence

import numpy as np

Box = tuple[float, float, float, float]

# Anything spelled like a location token, with any number of digits (group 1: the digits).
LOC_PATTERN = re.compile(r"<loc([0-9]+)>")
# A box in markup (group 1: what is inside, meant to be 4 numbers).
BOX_MARKUP = re.compile(r"<box>([^<>]*)</box>")
# One box-like item of text: a location token (group 1) or a box in markup (group 2).
_ITEM = re.compile(r"<loc([0-9]+)>|<box>([^<>]*)</box>")
PHRASE_TAGS = ("<phrase>", "</phrase>")
PHRASE = re.compile(r"<phrase>(.*?)</phrase>", re.S)
# Right after a phrase: its box, exactly 4 location tokens (group 1) or markup (group 2).
_LEADING_BOX = re.compile(r"\s*(?:((?:<loc[0-9]+>\s*){4})(?!\s*<loc)|<box>([^<>]*)</box>)")


def _show(box) -> str:
  """A short one-line rendering of whatever was passed as a box, for error messages."""
  try:
    items = None if isinstance(box, (str, bytes)) else list(box)
  except TypeError:
    items = None
  if items is None:
    text = repr(box)
  else:
    text = "[" + ", ".join(f"{v:g}" if _is_number(v) else repr(v) for v in items) + "]"
  text = " ".join(text.split())
  return text if len(text) <= 80 else text[:77] + "..."


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _check_num_bins(num_bins) -> int:
  if not isinstance(num_bins, numbers.Integral) or isinstance(num_bins, (bool, np.bool_)) or num_bins < 1:
    raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}.")
  return int(num_bins)


def as_boxes(boxes, name: str) -> np.ndarray:
  """float64 boxes [..., 4] ([y0, x0, y1, x1]), finite; otherwise a ValueError naming `name`."""
  try:
    b = np.asarray(boxes, dtype=np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"{name} {_show(boxes)} must be numbers of shape [..., 4] ([y0, x0, y1, x1]).") from None
  if b.shape[-1:] != (4,):
    raise ValueError(f"{name} must have shape [..., 4] ([y0, x0, y1, x1]), got {b.shape}.")
  if not np.all(np.isfinite(b)):
    raise ValueError(f"{name} has non-finite coordinates.")
  return b


def box_to_bins(box, num_bins: int) -> np.ndarray:
  """Bin indices (int64, same shape as `box`: [..., 4]) of normalised coordinates: bin i covers
  [i/N, (i+1)/N), and 1.0 goes to bin N-1. Raises ValueError for coordinates outside [0, 1]; the
  order y0 <= y1 is not checked here (normalize_box does that) and is preserved by quantisation."""
  n = _check_num_bins(num_bins)
  b = as_boxes(box, "box")
  if np.any(b < 0) or np.any(b > 1):
    raise ValueError(f"box {_show(b.reshape(-1))} must be normalised coordinates in [0, 1] (see normalize_box).")
  return np.minimum(np.floor(b * n), n - 1).astype(np.int64)


def bins_to_box(bins, num_bins: int) -> np.ndarray:
  """Normalised coordinates (float64, [..., 4]) of bin indices: each bin's centre (i + 0.5)/N."""
  n = _check_num_bins(num_bins)
  b = np.asarray(bins)
  if b.shape[-1:] != (4,):
    raise ValueError(f"bins must have shape [..., 4], got {b.shape}.")
  if not np.issubdtype(b.dtype, np.integer):
    raise ValueError(f"bins must be integers, got dtype {b.dtype}.")
  if np.any(b < 0) or np.any(b >= n):
    raise ValueError(f"bins {_show(b.reshape(-1))} must be in [0, {n}).")
  return (b.astype(np.float64) + 0.5) / n


def _ordered_box(b: np.ndarray) -> bool:
  return bool(np.all((b >= 0) & (b <= 1)) and b[0] <= b[2] and b[1] <= b[3])


def box_markup(box) -> str:
  """The markup of a normalised box: "<box>0.125 0.25 0.265625 0.390625</box>" (each coordinate's
  shortest decimal that reads back as the same float64, so the markup is exact). Raises ValueError for a box
  outside [0, 1] or with y1 < y0 or x1 < x0 (validate annotations with data.boxes.normalize_box)."""
  b = as_boxes(box, "box")
  if b.shape != (4,) or not _ordered_box(b):
    raise ValueError(f"box {_show(b.reshape(-1))} must be one normalised box [y0, x0, y1, x1] with y0 <= y1, x0 <= x1.")
  return "<box>" + " ".join(repr(float(v)) for v in b) + "</box>"


def markup_box(inner: str) -> Box | None:
  """The box inside "<box>...</box>" (its 4 numbers), or None when they are not a normalised box."""
  try:
    b = np.array([float(v) for v in inner.split()], np.float64)
  except ValueError:
    return None
  if b.shape != (4,) or not np.all(np.isfinite(b)) or not _ordered_box(b):
    return None
  return tuple(float(v) for v in b)


def has_boxes(text: str) -> bool:
  return BOX_MARKUP.search(text) is not None


def strip_boxes(text: str) -> str:
  """`text` without its box markup (what a tokenizer trains on: boxes become location tokens)."""
  return " ".join(BOX_MARKUP.sub(" ", text).split()) if has_boxes(text) else text


def detection_text(objects: Sequence[tuple[str, Box]], labels: Sequence[str] | None = None) -> str:
  """Detection text in markup for (label, box) objects: "<box>..</box> dog ; <box>..</box> cat".

  The order is fixed so that a decoder learns one answer per image: raster order (top to bottom,
  then left to right, by the box's top-left corner) over all kept objects whatever their label.
  Grouping by label would make the decoder choose an object's label before writing its box and
  then copy it from the group; in raster order the label follows the box it names (Pix2Seq).
  Objects whose label is not in `labels` (None: every label) are left out."""
  kept = sorted((tuple(box), label) for label, box in objects if labels is None or label in labels)
  return " ; ".join(f"{box_markup(box)} {label}" for box, label in kept)


def detect_prompt(labels: Sequence[str]) -> str:
  """The detection prompt for these labels (PaliGemma): "detect dog ; cat"; with one referring
  expression, "detect the dog on the left", it asks for that one box."""
  return "detect " + " ; ".join(labels)


def phrase_text(phrase: str, box) -> str:
  """A grounded phrase in markup: "<phrase>a black dog</phrase><box>..</box>" (Kosmos-2 style)."""
  return f"<phrase>{phrase}</phrase>{box_markup(box)}"


@dataclasses.dataclass(frozen=True)
class LocationTokens:
  """`num_bins` location tokens with ids [first_id, first_id + num_bins) in a decoder vocabulary.

  Use `for_vocab(vocab_size, num_bins)` to append them after a text vocabulary of vocab_size ids, so
  that no location id collides with a text id; `check_vocab` checks that for a hand-placed range.
  """

  num_bins: int
  first_id: int

  def __post_init__(self):
    _check_num_bins(self.num_bins)
    if not isinstance(self.first_id, numbers.Integral) or isinstance(self.first_id, bool) or self.first_id < 0:
      raise ValueError(f"first_id must be an integer >= 0, got {self.first_id!r}.")

  @classmethod
  def for_vocab(cls, vocab_size: int, num_bins: int) -> LocationTokens:
    """Location ids right after a text vocabulary of `vocab_size` ids: [vocab_size, vocab_size + num_bins)."""
    if not isinstance(vocab_size, numbers.Integral) or isinstance(vocab_size, bool) or vocab_size < 0:
      raise ValueError(f"vocab_size must be an integer >= 0, got {vocab_size!r}.")
    return cls(num_bins=num_bins, first_id=int(vocab_size))

  @property
  def stop(self) -> int:
    """One past the last location id: the vocabulary size needed to hold text and location ids."""
    return self.first_id + self.num_bins

  @property
  def ids(self) -> range:
    return range(self.first_id, self.stop)

  @property
  def digits(self) -> int:
    """Zero-padding width in "<locNNNN>": enough for num_bins - 1, and at least 4 as in PaliGemma."""
    return max(4, len(str(self.num_bins - 1)))

  def check_vocab(self, vocab_size: int) -> None:
    """Raises ValueError if the location ids overlap the text ids [0, vocab_size)."""
    if self.first_id < vocab_size:
      raise ValueError(
        f"location ids [{self.first_id}, {self.stop}) collide with the text vocabulary [0, {vocab_size}); "
        f"use LocationTokens.for_vocab({vocab_size}, {self.num_bins})."
      )

  def is_location(self, token_id):
    """Whether token_id (an int, or an array of ids elementwise) is a location id."""
    ids = np.asarray(token_id)
    out = (ids >= self.first_id) & (ids < self.stop)
    return bool(out) if out.ndim == 0 else out

  def token_ids(self, box) -> list[int]:
    """The 4 location ids of a normalised box [y0, x0, y1, x1]."""
    bins = box_to_bins(box, self.num_bins)
    if bins.shape != (4,):
      raise ValueError(f"token_ids takes one box of 4 coordinates, got shape {bins.shape}.")
    return [self.first_id + int(b) for b in bins]

  def box(self, ids: Sequence[int]) -> Box:
    """The normalised box (bin centres) of 4 location ids; ValueError if any id is not a location id."""
    ids = list(ids)
    if len(ids) != 4:
      raise ValueError(f"a box is 4 location ids, got {len(ids)}: {ids}.")
    bad = [i for i in ids if not _is_integer(i) or not self.is_location(i)]
    if bad:
      raise ValueError(f"ids {bad} are not location ids [{self.first_id}, {self.stop}).")
    return tuple(float(c) for c in bins_to_box(np.array([int(i) - self.first_id for i in ids]), self.num_bins))

  def text(self, bins) -> str:
    """ "<loc0012>" for bin 12 (an int), or the concatenation for a sequence of bins."""
    items = [bins] if _is_integer(bins) else list(np.asarray(bins).reshape(-1))
    for b in items:
      if not _is_integer(b) or not 0 <= b < self.num_bins:
        raise ValueError(f"bin {b!r} is not an integer in [0, {self.num_bins}).")
    return "".join(f"<loc{int(b):0{self.digits}d}>" for b in items)

  def bin_of(self, token: str) -> int:
    """The bin of one location token in its exact spelling ("<loc0012>" -> 12), strictly: unlike
    `parse`, any other padding ("<loc12>") or a bin >= num_bins is a one-line ValueError naming the
    token, so that text meant for the tokenizer cannot silently turn into other ids."""
    m = LOC_PATTERN.fullmatch(token) if isinstance(token, str) else None
    if m is None:
      raise ValueError(f"{token!r} is not a location token (<loc followed by digits and >).")
    b = int(m.group(1))
    if b >= self.num_bins:
      raise ValueError(
        f"location token {token} is out of range: there are {self.num_bins} location bins "
        f"({self.text(0)} ... {self.text(self.num_bins - 1)})."
      )
    if token != self.text(b):
      raise ValueError(
        f"location token {token} is misspelled: with {self.num_bins} location bins, bin {b} is written "
        f"{self.text(b)} ({self.digits} digits)."
      )
    return b

  def box_text(self, box) -> str:
    """The 4 location tokens of a normalised box, as text: "<loc0010><loc0020><loc0500><loc0600>"."""
    bins = box_to_bins(box, self.num_bins)
    if bins.shape != (4,):
      raise ValueError(f"box_text takes one box of 4 coordinates, got shape {bins.shape}.")
    return self.text(bins)

  def render(self, text: str, where: str = "") -> str:
    """`text` with each box in markup replaced by its 4 location tokens (module docstring); a
    malformed "<box>...</box>" is a one-line ValueError starting with `where`."""

    def tokens(m) -> str:
      box = markup_box(m.group(1))
      if box is None:
        raise ValueError(
          f"{where + ': ' if where else ''}{m.group(0)!r} is not a box: write <box>y0 x0 y1 x1</box> with 4 "
          "normalised coordinates in [0, 1], y0 <= y1 and x0 <= x1."
        )
      return self.box_text(box)

    return BOX_MARKUP.sub(tokens, text)

  def parse(self, text: str, token_index: bool = False) -> list[tuple]:
    """[(label, box)] from detection text such as "<loc0010><loc0020><loc0500><loc0600> dog ; <loc..>x4 cat".

    Model output is taken as it comes and never raises: an object is exactly 4 consecutive location
    tokens (whitespace between them allowed), or one box in markup (a reference's exact box),
    followed by its label, which runs to the next box or ";" (so a missing " ; " between objects is
    tolerated). Skipped: runs of other than 4 location tokens (incomplete or merged groups) with their
    label, text before any box, bins >= num_bins, malformed markup, and boxes with y1 < y0 or x1 < x0.
    The label is whitespace-normalised and may be "" (a box alone, as in referring-expression output).
    Boxes from tokens are bin centres, so equal bins give a zero-area box.

    token_index=True: (label, box, k) triples, k the index of the box's first location token among
    all the location tokens of `text` (counting from 0; None for a box in markup), which ties an
    object to the ids it was decoded from (e.g. to their probabilities).
    """
    if not isinstance(text, str):
      return []
    out: list[tuple] = []
    count = 0  # location tokens seen so far
    for segment in text.split(";"):
      run: list = []  # consecutive items: bins (int) and markup boxes (Box or None)
      first = None  # index of the run's first location token
      pos = 0
      for m in _ITEM.finditer(segment):
        between = segment[pos : m.start()]
        if between.strip():
          self._emit(run, " ".join(between.split()), out, first)
          run, first = [], None
        if m.group(1) is not None:
          first = count if not run else first
          count += 1
        run.append(int(m.group(1)) if m.group(1) is not None else ("box", markup_box(m.group(2))))
        pos = m.end()
      self._emit(run, " ".join(segment[pos:].split()), out, first)
    return out if token_index else [(label, box) for label, box, _ in out]

  def phrases(self, text: str) -> list[tuple[str, Box]]:
    """[(phrase, box)] of grounded text: each "<phrase>...</phrase>" directly followed (whitespace
    allowed) by its box, 4 location tokens or markup. Never raises; a phrase without a well-formed box
    right after it is skipped. Phrases are whitespace-normalised."""
    if not isinstance(text, str):
      return []
    out: list[tuple] = []
    for m in PHRASE.finditer(text):
      after = _LEADING_BOX.match(text, m.end())
      if after is None:
        continue
      run = (
        [int(b) for b in LOC_PATTERN.findall(after.group(1))]
        if after.group(1)
        else [("box", markup_box(after.group(2)))]
      )
      self._emit(run, " ".join(m.group(1).split()), out)
    return [(phrase, box) for phrase, box, _ in out]

  def _emit(self, run: list, label: str, out: list, first: int | None = None) -> None:
    if len(run) == 1 and isinstance(run[0], tuple):
      if run[0][1] is not None:
        out.append((label, run[0][1], None))
      return
    if len(run) != 4 or not all(isinstance(b, int) for b in run) or any(b >= self.num_bins for b in run):
      return
    y0, x0, y1, x1 = run
    if y1 < y0 or x1 < x0:
      return
    out.append((label, tuple(float(c) for c in bins_to_box(np.array(run), self.num_bins)), first))


def _is_integer(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
