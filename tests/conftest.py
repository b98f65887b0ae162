import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory):
  """One TFDS data dir per test session: tiny shapes builds are reused across tests."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def tiny_config(shared_data_dir):
  from mmjax import config_files
  c = config_files.load(os.path.join(CONFIGS, "tiny.py"))
  c.data.data_dir = shared_data_dir
  return c
