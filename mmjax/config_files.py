"""Loading experiment config files (`experiments/configs/*.py`, each with `get_config(arg)`).

Config files are plain Python files loaded by path (as absl's config flags do), not modules of an
installed package; a config that extends another loads it with `load(..)` relative to itself.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def load(path: str, arg: str | None = None, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """get_config(arg) of the file at `path`, then dotted-key overrides ({"data.image_size": 64})."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} does not exist.")
  name = "_mmjax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg is not None else module.get_config()
  for key, value in (overrides or {}).items():
    set_key(config, key, value)
  return config


def sibling(config_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Loads the config `name`.py that sits next to `config_file` (pass `__file__`)."""
  return load(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"), arg)


def set_key(config: ml_collections.ConfigDict, key: str, value) -> None:
  """Sets a dotted key; an unknown key is an error naming it (never a silent new key)."""
  node = config
  *parents, leaf = key.split(".")
  for i, p in enumerate(parents):
    if p not in node:
      raise KeyError(f"config has no key {'.'.join(parents[: i + 1])!r} (while setting {key!r}).")
    node = node[p]
  if leaf not in node:
    raise KeyError(f"config has no key {key!r}.")
  node[leaf] = value
