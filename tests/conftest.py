import importlib.util
import os

import pytest

# Triton's compiler library aborts the process when it is first loaded after XLA has compiled
# something (each bundles its own LLVM), and torch / transformers load it lazily, so a test run that
# reached them after a jitted test died. Load it first, in the interpreter mode the Triton kernel
# tests need (mmjax.kernels.interpret; compiled kernels run in child processes): what every full run
# already did while collecting tests/test_triton_kernel.py.
if importlib.util.find_spec("triton") is not None:
  import mmjax.kernels.interpret  # noqa: F401

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


def pytest_configure(config):
  config.addinivalue_line(
    "markers",
    "devices(n): needs n devices; with fewer, runs in a child pytest on n simulated "
    "CPU devices (tests/multidevice.py) instead of being skipped",
  )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
  marker = pyfuncitem.get_closest_marker("devices")
  if marker is None:
    return None
  from tests import multidevice

  # True: the test ran (and passed) in the child; None: run it here as usual.
  return True if multidevice.run_elsewhere(pyfuncitem, *marker.args) else None
