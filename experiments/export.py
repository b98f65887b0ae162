r"""Exports a trained workdir's pretrained tower back to the Hugging Face layout it came from.

  python experiments/export.py --workdir=DIR --subtree=decoder --out=/ckpt/gemma-finetuned

The subtree's checkpoint (config.model.init_from_pretrained.<subtree>) gives the family, the
config.json and each tensor's dtype; LoRA adapters are merged into their kernels first, and rows a
tokenizer added to the vocabulary (location tokens) are cut back to the checkpoint's; the source's
other parts (SigLIP's text tower beside its fine-tuned image tower) are copied as they are. The result
loads in `transformers` (and back into mmjax) like the original. A contrastive workdir exports its
whole model with --subtree=contrastive.
"""

from absl import app, flags, logging

from mmjax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
_SUBTREE = flags.DEFINE_string("subtree", "decoder", "The model subtree to export (a key of init_from_pretrained).")
_OUT = flags.DEFINE_string("out", None, "Directory to write the checkpoint into.", required=True)
_SOURCE = flags.DEFINE_string("source", "", "The checkpoint it came from (default: the run's init_from_pretrained).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax

  from mmjax import pretrained
  from mmjax.models import lora
  from mmjax.train import workdir as workdir_lib

  logging.set_verbosity(logging.WARNING)
  t = workdir_lib.load(_WORKDIR.value)
  subtree = _SUBTREE.value
  source = _SOURCE.value or str(dict(t.config.model.init_from_pretrained).get(subtree, "") or "")
  if not source:
    raise ValueError(
      f"--subtree={subtree}: the run has no config.model.init_from_pretrained.{subtree}; "
      "give --source=<checkpoint dir>."
    )
  params = lora.merge(jax.device_get(t.params))
  tree = params if subtree == "contrastive" else params.get(subtree)
  if tree is None:
    raise ValueError(f"--subtree={subtree}: the model has no such subtree; it has {sorted(params)}.")
  # The source's other parts (e.g. SigLIP's text tower beside a fine-tuned image tower) are copied.
  files = pretrained.export(_OUT.value, {subtree: tree}, source=source, copy_rest=True)
  print(f"wrote {len(files)} files to {_OUT.value} ({subtree} of {_WORKDIR.value}, step {t.step})")


if __name__ == "__main__":
  cli.run(main)
