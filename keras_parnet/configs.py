"""The ParNet configurations, without Keras: the command lines check flags
and the converter maps checkpoints with them before TensorFlow starts.
`keras_parnet.models` builds from them."""

# ParNet's five stride-2 stages need 32 px.
MIN_INPUT_SIZE = 32
# Blocks per stream (after each stream's first downsampling); read when a model is built.
STREAM_DEPTHS = (4, 5, 5)

# (w0, w1, w2, w3) and the dropout of the official configurations.
MODEL_CONFIGS = {
    "parnet_s": {"widths": (96, 192, 384, 1280), "dropout": 0.0},
    "parnet_m": {"widths": (128, 256, 512, 2048), "dropout": 0.0},
    "parnet_l": {"widths": (160, 320, 640, 2560), "dropout": 0.1},
    "parnet_xl": {"widths": (200, 400, 800, 3200), "dropout": 0.1},
}
