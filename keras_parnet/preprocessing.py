"""A run's resize as one Keras layer, so that a deployed model can take pixels of any size.

A run's model starts with its scaling (and, for converted ImageNet runs, the
official mean and std) as layers (`keras_parnet.models.preprocessing_layers`)
and takes 0-255 pixels at the run's size. Training and evaluation read files
through `keras_parnet.data`, which resizes with `resize_like_run`;
`RunPreprocessing` does the same resize in the graph of an exported artifact.
"""

import math

import keras
import tensorflow as tf

from keras_parnet.runs import image_size_pair

# How a run's images are resized when no crop is recorded: ImageDataGenerator's
# default, what train.py trains on (the geometric augmentation interpolates bilinearly).
RESIZE_METHOD = "nearest"


def resize_like_run(images, size, crop_fraction=None):
    """Resizes `(H, W, C)` or `(batch, H, W, C)` float images to `size` as a run does.

    Without `crop_fraction`, the whole image is resized by nearest neighbour
    (train.py's way). With it (converted ImageNet runs, timm's evaluation
    transform), the shorter side is resized bilinearly (antialiased) to
    `floor(max(size) / crop_fraction)` and a centered `size` crop is taken.
    """
    size = image_size_pair(size)
    if not crop_fraction:
        if list(images.shape[-3:-1]) == size:
            return images  # nearest neighbour at the same size: every pixel stays
        return tf.image.resize(images, size, method=RESIZE_METHOD)
    shape = tf.cast(tf.shape(images)[-3:-1], tf.float32)
    scale = math.floor(max(size) / crop_fraction) / tf.reduce_min(shape)
    resized_shape = tf.maximum(tf.cast(tf.floor(shape * scale), tf.int32), size)
    images = tf.image.resize(images, resized_shape, method="bilinear", antialias=True)
    return tf.image.resize_with_crop_or_pad(images, *size)


@keras.saving.register_keras_serializable(package="keras_parnet")
class RunPreprocessing(keras.layers.Layer):
    """RGB pixels in 0-255 (any numeric dtype, any size) -> float32 at the run's size.

    Resizes to `image_size` (see `resize_like_run`), multiplies by `rescale`
    and, when given, subtracts `mean` and divides by `std` per channel.
    `from_run` makes it resize only: the run's model scales and normalizes
    itself (artifacts exported before that carry the scaling here).

    Args:
        image_size: the run's `(height, width)`.
        rescale: pixel scale (`1`: what a run's model takes).
        mean, std: per-channel normalization after scaling, or `None`.
        crop_fraction: the run's center-crop fraction, or `None`.

    Input shape: `(batch, H, W, 3)`. Output shape: `(batch, *image_size, 3)` float32.
    """

    def __init__(self, image_size, rescale=1.0, mean=None, std=None, crop_fraction=None, **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size_pair(image_size)
        self.rescale = float(rescale)
        self.mean = None if mean is None else [float(value) for value in mean]
        self.std = None if std is None else [float(value) for value in std]
        self.crop_fraction = crop_fraction

    @classmethod
    def from_run(cls, config, **kwargs):
        """The resize (and crop) a run config (`run.json`) records, in front of
        the run's model, which does the rest of its preprocessing."""
        crop_fraction = config.get("preprocessing", {}).get("crop_fraction")
        return cls(config["image_size"], crop_fraction=crop_fraction, **kwargs)

    def call(self, images):
        images = tf.cast(images, tf.float32) * self.rescale
        images = resize_like_run(images, self.image_size, self.crop_fraction)
        if self.mean is not None:
            images = images - tf.constant(self.mean, tf.float32)
        if self.std is not None:
            images = images / tf.constant(self.std, tf.float32)
        return images

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.image_size, 3)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((inputs.shape[0], *self.image_size, 3), dtype="float32")

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "rescale": self.rescale,
            "mean": self.mean,
            "std": self.std,
            "crop_fraction": self.crop_fraction,
        }


def with_preprocessing(model, config, name=None):
    """The run's `model` (its preprocessing layers included) behind the run's
    resize: a model that takes uint8 RGB images `(batch, H, W, 3)` at the
    run's size and returns what `model` does."""
    inputs = keras.Input((*image_size_pair(config["image_size"]), 3), dtype="uint8", name="image")
    outputs = model(RunPreprocessing.from_run(config, name="preprocessing")(inputs))
    return keras.Model(inputs, outputs, name=name or f"{model.name}_with_preprocessing")
