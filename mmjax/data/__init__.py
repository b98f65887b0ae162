"""mmjax data: dataset sources, manifests, TFDS builders, tokenizer training and the grain pipeline."""

from mmjax.data.config import default_data_config, default_data_dir

__all__ = ["default_data_config", "default_data_dir"]
