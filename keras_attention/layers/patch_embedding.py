import numbers

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.layers import _common


def _standardize_patch_size(patch_size):
    """`patch_size` as `(patch_height, patch_width)`, or a ValueError."""

    def is_positive_int(value):
        return (
            isinstance(value, numbers.Integral)
            and not isinstance(value, bool)
            and value > 0
        )

    if is_positive_int(patch_size):
        return (int(patch_size), int(patch_size))
    if (
        isinstance(patch_size, (list, tuple))
        and len(patch_size) == 2
        and all(is_positive_int(p) for p in patch_size)
    ):
        return (int(patch_size[0]), int(patch_size[1]))
    raise ValueError(
        "Received an invalid value for argument `patch_size`, expected a "
        "positive integer or a tuple of two positive integers "
        f"`(patch_height, patch_width)`. Received: patch_size={patch_size!r}"
    )


@keras.saving.register_keras_serializable(package="keras_attention")
class PatchEmbedding(_common.ValidatedLayer):
    """Splits images into patches and projects each patch to a vector.

    An image `(batch, height, width, channels)` is cut into non-overlapping
    `patch_height x patch_width` patches, in row-major order (left to right,
    then top to bottom), and each flattened patch is mapped by one shared
    linear projection to `hidden_dim` features: the patch embedding of the
    Vision Transformer. This is the same computation as a `Conv2D` with
    `kernel_size = strides = patch_size` and `"valid"` padding followed by a
    reshape to a sequence, and the kernel has the `Conv2D` layout
    `(patch_height, patch_width, channels, hidden_dim)`, so weights carry
    over from a convolutional patchifier (keras-hub's ViT) unchanged.

    What it adds over Keras core: one serializable layer instead of a
    `Conv2D` and a `Reshape` whose target shape is baked into the model, so
    one model accepts images of any size that is a multiple of the patch
    size (the number of patches follows the image). A size that is not a
    multiple raises a `ValueError` when it is known statically; a strided
    convolution would silently drop the trailing rows and columns. When the
    size is known only at run time (a graph with unknown height and width),
    such an image fails at run time in the reshape instead.

    Masking and dtype: images carry no Keras mask and the output carries
    none. Under a mixed-precision policy the projection runs in the compute
    dtype and the weights stay in float32.

    Args:
        patch_size: int or tuple of two ints `(patch_height, patch_width)`.
        hidden_dim: int, the size of each patch embedding.
        use_bias: bool, whether the projection adds a bias.
        kernel_initializer: initializer for the projection kernel.
        bias_initializer: initializer for the bias.
        kernel_regularizer: regularizer for the projection kernel.
        bias_regularizer: regularizer for the bias.
        kernel_constraint: constraint for the projection kernel.
        bias_constraint: constraint for the bias.
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Call arguments:
        inputs: images of shape `(batch_size, height, width, channels)`, with
            `height` a multiple of `patch_height` and `width` a multiple of
            `patch_width`.

    Returns:
        `(batch_size, num_patches, hidden_dim)`, where `num_patches =
        (height // patch_height) * (width // patch_width)`.

    Example:

    >>> import numpy as np
    >>> layer = PatchEmbedding(patch_size=4, hidden_dim=32)
    >>> images = np.random.rand(2, 8, 12, 3).astype("float32")
    >>> tuple(layer(images).shape)  # a 2 x 3 grid of patches
    (2, 6, 32)

    Reference:
        [Dosovitskiy et al., 2021](https://arxiv.org/abs/2010.11929),
        "An Image is Worth 16x16 Words: Transformers for Image Recognition
        at Scale".
    """

    def __init__(
        self,
        patch_size,
        hidden_dim,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        patch_hw = _standardize_patch_size(patch_size)
        _validation.check_positive_int("hidden_dim", hidden_dim)
        _validation.check_bool("use_bias", use_bias)
        _validation.check_size_product(
            {"patch_size": patch_hw, "hidden_dim": hidden_dim}
        )
        super().__init__(**kwargs)
        # Kept as given (an int stays an int) so the config round-trips.
        self.patch_size = (
            patch_hw[0]
            if isinstance(patch_size, numbers.Integral)
            else patch_hw
        )
        self._patch_hw = patch_hw
        self.hidden_dim = int(hidden_dim)
        self.use_bias = use_bias
        _common.set_keras_objects(self, locals())

    def _check_shape(self, shape):
        _validation.check_rank("inputs", shape, (4,))
        for axis, name, patch in (
            (1, "height", self._patch_hw[0]),
            (2, "width", self._patch_hw[1]),
        ):
            size = shape[axis]
            if size is not None and size % patch:
                raise ValueError(
                    f"The image {name} of `inputs` must be a multiple of "
                    f"the patch {name} {patch} (patch_size="
                    f"{self.patch_size!r}). "
                    f"Received: inputs.shape={tuple(shape)}"
                )

    def build(self, input_shape):
        self._check_shape(input_shape)
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "The last dimension (channels) of `inputs` must be known. "
                f"Received: inputs.shape={tuple(input_shape)}"
            )
        _validation.check_weight_shapes(
            "PatchEmbedding",
            {"kernel": self._patch_hw + (channels, self.hidden_dim)},
            {
                "patch_size": self.patch_size,
                "channels": channels,
                "hidden_dim": self.hidden_dim,
            },
        )
        self._channels = channels
        self.kernel = self.add_weight(
            name="kernel",
            shape=self._patch_hw + (channels, self.hidden_dim),
            **_common.weight_kwargs(self, "kernel"),
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.hidden_dim,),
                **_common.weight_kwargs(self, "bias"),
            )

    def call(self, inputs):
        self._check_shape(inputs.shape)
        _validation.check_last_dim(
            "inputs", inputs.shape, self._channels, "channels"
        )
        # Integer images (e.g. uint8 pixels) are projected as floats.
        inputs = ops.cast(inputs, self.compute_dtype)
        patch_h, patch_w = self._patch_hw
        shape = ops.shape(inputs)
        grid_h = shape[1] // patch_h
        grid_w = shape[2] // patch_w
        # The batch size is explicit (not -1): an image whose size is not a
        # multiple of the patch size then fails the reshape at run time.
        patches = ops.reshape(
            inputs,
            (shape[0], grid_h, patch_h, grid_w, patch_w, self._channels),
        )
        outputs = ops.einsum("bipjqc,pqcd->bijd", patches, self.kernel)
        outputs = ops.reshape(
            outputs, (shape[0], grid_h * grid_w, self.hidden_dim)
        )
        if self.use_bias:
            outputs = outputs + self.bias
        return outputs

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        self._check_shape(input_shape)
        height, width = input_shape[1], input_shape[2]
        num_patches = None
        if height is not None and width is not None:
            num_patches = (height // self._patch_hw[0]) * (
                width // self._patch_hw[1]
            )
        return (input_shape[0], num_patches, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "use_bias": self.use_bias,
            }
        )
        config.update(_common.serialize_keras_objects(self))
        return config
