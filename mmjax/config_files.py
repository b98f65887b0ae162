"""Loading experiment config files (`experiments/configs/*.py`, each with `get_config(arg)`).

Config files are plain Python files loaded by path (as absl's config flags do), not modules of an
installed package; a config that extends another loads it with `sibling(..)` relative to itself.
`load` locks what it returns (mmjax.train.config has why): setting a key that does not exist is
an error naming it, and a value of another type than the default's is a TypeError.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def load(path: str, arg: str | None = None, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """get_config(arg) of the file at `path`, locked, then dotted-key overrides ({"data.image_size": 64})."""
  config = _get_config(path, arg)
  config.lock()
  _unlock_maps(config)
  apply_overrides(config, overrides or {})
  return config


def sibling(config_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config `name`.py that sits next to `config_file` (pass `__file__`), unlocked so that the
  calling config may add its own keys."""
  return _get_config(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"), arg)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> None:
  """Dotted keys -> values, as absl's --config.a.b=v flags do; an unknown key is an error naming it."""
  for key, value in overrides.items():
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or (part not in node and node.is_locked):
        where = ".".join(parts[:i]) or "the config"
        known = ", ".join(sorted(node)) if isinstance(node, ml_collections.ConfigDict) else "none: not a block"
        raise KeyError(f"config has no key {key!r} (keys of {where}: {known}).")
      node = node[part] if i < len(parts) - 1 else node
    try:
      config.update_from_flattened_dict({key: value})
    except TypeError as e:
      raise TypeError(f"config key {key!r}: {e}") from None


def _unlock_maps(config: ml_collections.ConfigDict) -> None:
  """Blocks that are empty by default are free-form maps (model.init_from: subtree -> workdir)."""
  for value in config.values():
    if isinstance(value, ml_collections.ConfigDict):
      if not value:
        value.unlock()
      else:
        _unlock_maps(value)


def _get_config(path: str, arg: str | None) -> ml_collections.ConfigDict:
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} does not exist.")
  name = "_mmjax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()
