"""Pretrained checkpoints in the Hugging Face layout on local disk, loaded into mmjax's own modules.

  parts = pretrained.parts("/ckpt/gemma-2b")        # {"decoder": Part(module="decoder", fields={...}, ...)}
  params = pretrained.load("/ckpt/gemma-2b", "decoder")             # host arrays, mmjax's tree
  params = pretrained.load(path, "decoder", target=abstract_params)  # straight into their shardings
  pretrained.export("/out/gemma-ft", {"decoder": params}, source="/ckpt/gemma-2b")

A checkpoint holds one or more *parts*, each one mmjax module: CLIP and SigLIP an "image_encoder"
(ViT), a "text_encoder" (TextEncoder) and the whole "contrastive" model (both towers, pooling,
projections, logit scale); BERT a "text_encoder" and its "text_pooler"; ViT an "image_encoder" (and
its pooler or classifier); Whisper an "audio_encoder" and a "decoder"; GPT-2, Llama and Gemma a
"decoder". Part names are the VisionLanguageModel's subtree names, so
`config.model.init_from_pretrained.<subtree> = path` takes that part of the checkpoint
(mmjax.pretrained.compose); "contrastive" is a whole `config.model.kind="contrastive"` model.
Families are chosen by config.json's "model_type" through mmjax.registry (floor "pretrained"): a
new family is one module there.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from mmjax import registry
from mmjax.pretrained import checkpoint
from mmjax.pretrained.convert import Part, export_part, load_part


def hf_config(path: str) -> dict:
  return checkpoint.read_config(path)


def parts(path: str, reader: checkpoint.Reader | None = None) -> dict[str, Part]:
  """The parts of the checkpoint at `path` (its family from config.json's model_type); `reader`:
  the checkpoint's tensors when the caller has them open already."""
  cfg = checkpoint.read_config(path)
  model_type = cfg.get("model_type")
  if model_type not in registry.names("pretrained"):
    raise ValueError(
      f"{path}/config.json: model_type {model_type!r} is not a family mmjax reads; "
      f"supported: {registry.names('pretrained')}."
    )
  # The tensor names too: one family saves under several layouts (GPT-2 with or without "transformer.").
  # Without weights (a config alone), the architecture is still checked; loading then names the files.
  try:
    names = (reader or checkpoint.Reader(path)).names()
  except FileNotFoundError:
    names = []
  return registry.get("pretrained", model_type, f"{path}/config.json model_type")(cfg, names)


def part(path: str, name: str, reader: checkpoint.Reader | None = None) -> Part:
  found = parts(path, reader)
  if name not in found:
    raise KeyError(f"{path}: the checkpoint has no part {name!r}; it has {sorted(found)}.")
  return found[name]


def load(path: str, name: str, target: Mapping | None = None, fresh: tuple[str, ...] = ()) -> dict:
  """Part `name`'s parameters (mmjax's nested dict). target: {"/"-joined param path: abstract array
  with a sharding, or the initialised array} (convert.load_part): then every array is created in
  its sharding, and shapes are checked against the model's; `fresh` names layers the model adds."""
  reader = checkpoint.Reader(path)
  return load_part(part(path, name, reader), reader, f"{path} ({name})", target, fresh=fresh)


def export(
  out: str, params: Mapping[str, Mapping], source: str, max_shard_bytes: int = 5 << 30, copy_rest: bool = False
) -> list[str]:
  """Writes `params` ({part name: that module's parameters}) as a checkpoint of `source`'s family
  into the directory `out`: `source`'s config.json, each tensor in `source`'s dtype. Every tensor
  of the source must come from some part (else the exported checkpoint would lack it), unless
  copy_rest: then the tensors no given part maps are copied from `source` unchanged. Loading all
  of a checkpoint's parts and exporting them reproduces its tensors bit for bit."""
  reader = checkpoint.Reader(source)
  found = parts(source, reader)
  unknown = sorted(set(params) - set(found))
  if unknown:
    raise KeyError(f"export: {source} has no parts {unknown}; it has {sorted(found)}.")
  dtypes = {n: reader.info(n).dtype for n in reader.names()}
  rows = {n: reader.info(n).shape[0] for n in reader.names() if reader.info(n).shape}
  tensors = {}
  for name, tree in params.items():
    tensors.update(export_part(found[name], tree, dtypes, rows))
  missing = sorted(set(reader.names()) - set(tensors))
  if copy_rest:
    tensors.update({n: np.asarray(reader.get(n)) for n in missing})
    missing = []
  if missing:
    raise KeyError(
      f"export: no parameters given for {missing[:5]} ({len(missing)} tensors of {source}); pass all parts."
    )
  return checkpoint.write(out, tensors, checkpoint.read_config(source), max_shard_bytes)
