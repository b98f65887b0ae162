"""mmjax.registry: every built-in name resolves to a component of its floor's interface, a user's
"module:Attribute" is chosen the same way, and a bad name is an error naming the key and choices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import registry
from mmjax.data.source import DatasetSource
from mmjax.fusion import Conditioning, Fusion, build_fusion
from mmjax.models import build_model
from mmjax.models.kind import HOOKS


@pytest.mark.parametrize("floor", sorted(registry.BUILTIN))
def test_every_builtin_resolves_to_its_floors_interface(floor):
  for name in registry.names(floor):
    component = registry.get(floor, name)
    if floor in ("encoders", "decoders"):
      assert isinstance(component, type) and issubclass(component, nn.Module), name
    elif floor == "fusion":
      assert isinstance(component, type) and issubclass(component, Fusion), name
    elif floor == "models":
      assert issubclass(component, nn.Module) and all(hasattr(component, h) for h in HOOKS), name
    elif floor == "datasets":
      assert isinstance(component, DatasetSource), name
    else:
      assert callable(component) and not isinstance(component, type), name


def test_bad_names_say_which_key_and_the_choices():
  with pytest.raises(
    ValueError,
    match=r"config.model.fusion.name='crossattn' is not a built-in fusion name; "
    r"use one of \['cross_attention', 'flamingo', 'prefix_lm', 'qformer'\]",
  ):
    registry.get("fusion", "crossattn", "config.model.fusion.name")
  with pytest.raises(ValueError, match="no module 'no.such.module'"):
    registry.get("encoders", "no.such.module:Encoder", "config.model.image_encoder")
  with pytest.raises(ValueError, match="module 'mmjax.fusion.base' has no attribute 'Nope'"):
    registry.get("fusion", "mmjax.fusion.base:Nope")
  with pytest.raises(ValueError, match="unknown component floor 'optimizers'"):
    registry.get("optimizers", "adam")
  with pytest.raises(
    ValueError, match=r"config.model.kind='gan'.*\['contrastive', 't2i_flow', 't2i_pixels', 't2i_tokens', 'vlm'\]"
  ):
    build_model(ml_collections.ConfigDict(dict(kind="gan")), 8)
  with pytest.raises(ValueError, match="not a mmjax.fusion.Fusion subclass"):
    build_fusion("mmjax.layers:Dense")


class SumPoolFusion(Fusion):
  """A family defined outside mmjax: the image tokens' mean as a one-token prefix."""

  @nn.compact
  def __call__(self, media, text=None):
    image, _ = media["image"]
    prefix = nn.Dense(self.width)(image.mean(1, keepdims=True))
    return Conditioning(prefix=prefix, prefix_len=jnp.ones((image.shape[0],), jnp.int32))


def test_a_users_fusion_is_named_by_module_path():
  fusion = build_fusion(f"{__name__}:SumPoolFusion", width=4)
  assert isinstance(fusion, SumPoolFusion)
  image = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 5)), jnp.float32)
  cond, params = fusion.init_with_output(jax.random.key(0), {"image": (image, None)})
  kernel, bias = params["params"]["Dense_0"]["kernel"], params["params"]["Dense_0"]["bias"]
  want = np.asarray(image, np.float64).mean(1, keepdims=True) @ np.asarray(kernel, np.float64) + np.asarray(bias)
  np.testing.assert_allclose(np.asarray(cond.prefix), want, rtol=1e-5, atol=1e-6)
