"""ParNet ("Non-deep Networks", Goyal et al. 2021) for Keras 3."""

from keras_parnet.blocks import (
    conv_bn,
    downsampling_block,
    fusion_block,
    parnet_block,
    sse,
    stream,
)
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

__version__ = "0.1.0"
