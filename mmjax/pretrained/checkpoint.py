"""Hugging Face checkpoint directories on local disk: `config.json` and safetensors tensors, one file
(`model.safetensors`) or several with `model.safetensors.index.json`.

The safetensors format is read here directly (an 8-byte header length, a JSON header of
name -> dtype / shape / byte offsets, then raw little-endian bytes) rather than through a framework:
the header alone gives every tensor's shape and dtype, so a whole mapping is checked before one
byte of data is read, and a tensor is memory-mapped, so a device's shard of it is read from disk
without a full copy per device. bfloat16 comes from ml_dtypes (which JAX ships).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Mapping

import ml_dtypes
import numpy as np

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"

DTYPES = {
  "F64": np.dtype(np.float64),
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "I64": np.dtype(np.int64),
  "I32": np.dtype(np.int32),
  "I16": np.dtype(np.int16),
  "I8": np.dtype(np.int8),
  "U8": np.dtype(np.uint8),
  "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}


def read_config(path: str) -> dict:
  """The checkpoint's config.json as a dict (one-line errors naming the file)."""
  file = os.path.join(path, CONFIG)
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{path}: no {CONFIG}; expected a Hugging Face checkpoint directory.")
  try:
    with open(file, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{file}: not valid JSON ({e}).") from None


class TensorInfo:
  """Where one tensor lies: its file, dtype, shape and byte range."""

  def __init__(self, file: str, name: str, dtype: str, shape, start: int, end: int):
    if dtype not in DTYPES:
      raise ValueError(
        f"{file}: tensor {name!r} has dtype {dtype}, which mmjax cannot represent; use {sorted(DTYPES)}."
      )
    self.file, self.name, self.dtype, self.shape = file, name, DTYPES[dtype], tuple(int(d) for d in shape)
    self.start, self.end = int(start), int(end)
    if self.end - self.start != int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize:
      raise ValueError(f"{file}: tensor {name!r} of shape {self.shape} {dtype} has {self.end - self.start} bytes.")


def _header(file: str) -> tuple[dict, int]:
  with open(file, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{file}: not a safetensors file (shorter than its header).")
    (n,) = struct.unpack("<Q", raw)
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError):
      raise ValueError(f"{file}: not a safetensors file (unreadable header).") from None
  return header, 8 + n


class Reader:
  """The tensors of a checkpoint directory (or of one .safetensors file), by name: shapes and dtypes
  from the headers, data memory-mapped on demand."""

  def __init__(self, path: str):
    self.path = path
    index = os.path.join(path, INDEX)
    if os.path.isfile(path) and path.endswith(".safetensors"):
      path, files = os.path.split(path)
      files = [files]
    elif os.path.isfile(index):
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
      files = sorted(set(weight_map.values()))
    elif os.path.isfile(os.path.join(path, SINGLE)):
      files = [SINGLE]
    else:
      raise FileNotFoundError(f"{path}: no {SINGLE} or {INDEX} (only safetensors checkpoints are read).")
    self.infos: dict[str, TensorInfo] = {}
    self._maps: dict[str, np.memmap] = {}
    self.metadata: dict = {}
    for name in files:
      file = os.path.join(path, name)
      if not os.path.isfile(file):
        raise FileNotFoundError(f"{index}: names {name}, which is missing.")
      header, data_start = _header(file)
      self.metadata.update(header.pop("__metadata__", {}) or {})
      for tensor, h in header.items():
        start, end = h["data_offsets"]
        self.infos[tensor] = TensorInfo(file, tensor, h["dtype"], h["shape"], data_start + start, data_start + end)

  def __contains__(self, name: str) -> bool:
    return name in self.infos

  def names(self) -> list[str]:
    return sorted(self.infos)

  def info(self, name: str) -> TensorInfo:
    if name not in self.infos:
      raise KeyError(f"{self.path}: the checkpoint has no tensor {name!r}.")
    return self.infos[name]

  def get(self, name: str) -> np.ndarray:
    """The tensor as a read-only memory-mapped array (no copy until it is used)."""
    info = self.info(name)
    if info.file not in self._maps:
      self._maps[info.file] = np.memmap(info.file, dtype=np.uint8, mode="r")
    raw = self._maps[info.file][info.start : info.end]
    return raw.view(info.dtype).reshape(info.shape)


def write(path: str, tensors: Mapping[str, np.ndarray], config: dict, max_shard_bytes: int = 5 << 30) -> list[str]:
  """Writes `config.json` and the tensors (several files + index when they pass max_shard_bytes)
  into the directory `path`; each file is written to a temporary name and renamed, so a failed
  export leaves no half-written file. Returns the files written."""
  os.makedirs(path, exist_ok=True)
  shards: list[list[str]] = [[]]
  size = 0
  for name in sorted(tensors):
    n = np.asarray(tensors[name]).nbytes
    if shards[-1] and size + n > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += n
  names = (
    [SINGLE]
    if len(shards) == 1
    else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  )
  for file, members in zip(names, shards):
    _atomic(
      os.path.join(path, file), lambda f, members=members: _write_safetensors(f, {k: tensors[k] for k in members})
    )
  written = list(names)
  if len(shards) > 1:
    index = {"metadata": {}, "weight_map": {k: file for file, members in zip(names, shards) for k in members}}
    _atomic(os.path.join(path, INDEX), lambda f: f.write(json.dumps(index, indent=2).encode()))
    written.append(INDEX)
  _atomic(os.path.join(path, CONFIG), lambda f: f.write(json.dumps(config, indent=2, sort_keys=True).encode()))
  return written + [CONFIG]


def _write_safetensors(f, tensors: Mapping[str, np.ndarray]) -> None:
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    a = np.asarray(tensors[name], order="C")  # keeps 0-d tensors 0-d (ascontiguousarray would not)
    if a.dtype not in NAMES:
      raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be written to safetensors.")
    header[name] = {"dtype": NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays.append(a)
  header["__metadata__"] = {"format": "pt"}
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
  f.write(struct.pack("<Q", len(raw)) + raw)
  for a in arrays:
    f.write(a.tobytes())


def _atomic(file: str, write_fn) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(file), prefix="." + os.path.basename(file), suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write_fn(f)
    os.replace(tmp, file)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
