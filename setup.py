"""mmjax: a JAX research codebase for multimodal generative models.

`kernels/` (hand-written GPU kernels) lives beside the library in the source tree but is installed
as `mmjax.kernels`: a bare top-level `kernels` would clash with an unrelated PyPI package.
"""

import setuptools

_LIB_PACKAGES = setuptools.find_packages(include=["mmjax", "mmjax.*"])
_KERNEL_PACKAGES = ["mmjax.kernels"] + ["mmjax.kernels." + p for p in setuptools.find_packages(where="kernels")]

setuptools.setup(
  name="mmjax",
  version="0.1.0",
  description="Multimodal generative models in JAX: encoders -> fusion -> decoder.",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  packages=_LIB_PACKAGES + _KERNEL_PACKAGES,
  package_dir={"mmjax": "mmjax", "mmjax.kernels": "kernels"},
  install_requires=[
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "tensorflow-datasets>=4.9.8",
    # TFDS builds datasets (tf.train.Example serialisation) with TensorFlow; the CPU build is enough.
    "tensorflow-cpu>=2.18",
    "array_record>=0.7",
    "grain>=0.2.12",
    "einops>=0.8",
    "ml_collections>=1.0",
    "absl-py>=2.1",
    "numpy>=1.26",
    "pillow>=10",
    "sentencepiece>=0.2",
    "tokenizers>=0.20",  # pretrained checkpoints' tokenizer.json (mmjax.pretrained.tokenizers)
    "tqdm>=4.66",
    "tensorboardX>=2.6",
  ],
  extras_require={
    # triton runs the kernel source under its interpreter on CPU in the tests.
    # The notebooks are executed by the tests, so their runtime is part of the test extra.
    # pycocoevalcap: the reference CIDEr-D that tests/test_metrics.py checks mmjax's against.
    "test": [
      "pytest>=8",
      "pytest-xdist>=3.5",
      "hypothesis>=6.100",
      "chex>=0.1.90",
      "triton>=3.4",
      "jupytext>=1.16",
      "nbclient>=0.10",
      "nbformat>=5.10",
      "ipykernel>=6.29",
      "matplotlib>=3.8",
      "pycocoevalcap>=1.2",
      "pycocotools>=2.0",  # the reference COCO AP that tests/test_grounding_metrics.py checks mmjax's against
      "ruff==0.17.6",  # pinned: tests/test_style.py checks the tree is formatted as this version formats it
      # The reference implementations that mmjax.pretrained's checkpoints are checked against (CPU torch;
      # transformers 5.25 needs a `kernels` release the registry lacks). No torchvision: PyPI's build does
      # not load beside the CPU torch and makes transformers' CLIP fail to import.
      "torch==2.13.0",
      "transformers>=5.24,<5.25",
      "safetensors>=0.4",
      "ftfy>=6.1",  # open_clip's reference CLIP tokenizer (open_clip_torch itself: see the README's test command)
    ],
    "gpu": ["jax[cuda12]", "triton>=3.4", "jax-triton>=0.3.1"],
    "notebooks": ["jupyter", "nbclient>=0.10", "nbformat>=5.10", "jupytext>=1.16", "matplotlib>=3.8", "ipykernel"],
  },
)
