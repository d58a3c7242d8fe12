"""Channel-reordering layers used by ParNet's grouped blocks.

Both are pure permutations of the channel axis written with `keras.ops`, so
they work at any spatial size, save in `.keras`/`.h5` without registering
custom objects by hand, and need no `Lambda`.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_parnet")
class ChannelShuffle(keras.layers.Layer):
    """ShuffleNet channel shuffle for channels-last tensors.

    Channel `g * (C // groups) + j` moves to position `j * groups + g`, the same
    permutation as the official PyTorch `channel_shuffle`.

    Args:
        groups: number of groups; must divide the channel count.
    """

    def __init__(self, groups, **kwargs):
        super().__init__(**kwargs)
        self.groups = int(groups)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.groups:
            raise ValueError(
                f"ChannelShuffle: {channels} channels cannot be split into "
                f"{self.groups} groups."
            )

    def call(self, inputs):
        shape = ops.shape(inputs)
        channels = inputs.shape[-1]
        grouped = ops.reshape(
            inputs, (-1, shape[1], shape[2], self.groups, channels // self.groups)
        )
        grouped = ops.transpose(grouped, (0, 1, 2, 4, 3))
        return ops.reshape(grouped, (-1, shape[1], shape[2], channels))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="keras_parnet")
class InterleaveChannels(keras.layers.Layer):
    """Concatenates same-shaped inputs with their channels interleaved.

    For inputs `a` and `b` the output channels are `a[0], b[0], a[1], b[1], ...`
    (the official `Concat2d(shuffle=True)`), so that a following convolution with
    `groups=2` sees half of each input in each group.
    """

    def call(self, inputs):
        shape = ops.shape(inputs[0])
        channels = inputs[0].shape[-1] * len(inputs)
        stacked = ops.stack(inputs, axis=-1)
        return ops.reshape(stacked, (-1, shape[1], shape[2], channels))

    def build(self, input_shape):
        if len({tuple(shape) for shape in input_shape}) != 1:
            raise ValueError(
                "InterleaveChannels needs inputs of one shape, got "
                f"{[tuple(shape) for shape in input_shape]}."
            )

    def compute_output_shape(self, input_shape):
        first = input_shape[0]
        return (*first[:-1], first[-1] * len(input_shape))
