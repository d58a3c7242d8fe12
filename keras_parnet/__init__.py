"""ParNet ("Non-deep Networks", Goyal et al. 2021) for Keras 3.

Importing the package loads nothing heavy: each public name imports its
module (and so Keras) on first use. The custom layers register with Keras
when `keras_parnet.layers` is imported, which any builder does; import it
before `keras.saving.load_model` of a `.keras` file.
"""

import importlib

__version__ = "0.1.0"

_MODULES = {
    "conv_bn": "keras_parnet.blocks",
    "downsampling_block": "keras_parnet.blocks",
    "fusion_block": "keras_parnet.blocks",
    "parnet_block": "keras_parnet.blocks",
    "sse": "keras_parnet.blocks",
    "stream": "keras_parnet.blocks",
    "ChannelShuffle": "keras_parnet.layers",
    "InterleaveChannels": "keras_parnet.layers",
    "BUILDERS": "keras_parnet.models",
    "ParNet": "keras_parnet.models",
    "load_weights_file": "keras_parnet.models",
    "parnet_s": "keras_parnet.models",
    "parnet_m": "keras_parnet.models",
    "parnet_l": "keras_parnet.models",
    "parnet_xl": "keras_parnet.models",
    "load_run": "keras_parnet.runs",
    "reparameterize": "keras_parnet.reparam",
    "predict_image": "keras_parnet.predict",
    "classification_report": "keras_parnet.metrics",
    "evaluate_run": "keras_parnet.evaluate",
    "analyze_dataset": "keras_parnet.analyze",
}

__all__ = sorted(_MODULES)


def __getattr__(name):
    if name not in _MODULES:
        raise AttributeError(f"module 'keras_parnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_MODULES})
