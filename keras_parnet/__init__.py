"""ParNet ("Non-deep Networks", Goyal et al. 2021) for Keras 3."""

import importlib
import os

# TensorFlow's C++ info lines drown the tools' output; a user's setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_parnet.blocks import (  # noqa: E402
    conv_bn,
    downsampling_block,
    fusion_block,
    parnet_block,
    sse,
    stream,
)
# Importing the layers registers them, so `.keras` files load after `import keras_parnet`.
from keras_parnet.layers import ChannelShuffle, InterleaveChannels
from keras_parnet.models import (
    BUILDERS,
    ParNet,
    load_weights_file,
    parnet_l,
    parnet_m,
    parnet_s,
    parnet_xl,
)
from keras_parnet.runs import load_run

__version__ = "0.1.0"

__all__ = [
    "BUILDERS", "ChannelShuffle", "InterleaveChannels", "ParNet", "conv_bn",
    "downsampling_block", "fusion_block", "load_run", "load_weights_file", "parnet_block",
    "parnet_l", "parnet_m", "parnet_s", "parnet_xl", "sse", "stream",
]

# The tools' entry points, imported on first use.
_LAZY = {
    "reparameterize": "keras_parnet.reparam",
    "predict_image": "keras_parnet.predict",
    "classification_report": "keras_parnet.evaluate",
    "evaluate_run": "keras_parnet.evaluate",
    "analyze_dataset": "keras_parnet.analyze",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_parnet' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
