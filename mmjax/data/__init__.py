"""mmjax data: shapes scenes, manifests, TFDS builders, tokenizer training and grain pipeline."""
from mmjax.data.config import default_data_config, default_data_dir
