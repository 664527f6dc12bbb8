"""Image classification with a Vision Transformer, and what its attention sees.

What it shows:
    A small Vision Transformer (ViT) built from keras_attention layers:
    uint8 pixels go in, `Rescaling` turns them into floats inside the model,
    `PatchEmbedding` cuts the image into patches and projects each one, a
    class token (`--head cls`) or an `AttentionPooling` head (`--head
    pool`, the default) summarises the patches, `PositionEmbedding`
    (learned, or `--position sinusoidal`) says where each patch is, pre-norm
    `TransformerEncoder` blocks mix them, and a `Dense` softmax named
    "probabilities" classifies. `--model conv-attention` instead lets every
    position of a convolutional feature map attend to every other over both
    spatial axes (`MultiHeadAttention(attention_axes=(1, 2))`), with no
    reshape to a sequence. The script trains with `fit`, reports test
    accuracy, saves an attention-rollout figure overlaid on test digits, and
    exports a SavedModel for TF Serving whose signatures take uint8 pixels
    (`serving_default`) or PNG bytes decoded inside the graph
    (`serving_bytes`). Under JAX or PyTorch a TensorFlow process exports the
    model saved to runs/image_classification/image_classification.keras,
    `serving_default` only (docs/cross-backend-export.md).

The data: scikit-learn's bundled 8x8 handwritten digits by default (1797
images, offline), split 75/25 from --seed. `--dataset mnist` or `--dataset
cifar10` downloads one through `keras.datasets` (internet needed).

How to run:
    python examples/image_classification.py              # digits, ViT
    python examples/image_classification.py --head cls   # a class token
    python examples/image_classification.py --model conv-attention
    KERAS_BACKEND=jax python examples/image_classification.py
    KERAS_BACKEND=torch python examples/image_classification.py
    python examples/image_classification.py --distribute mirrored \\
        --cpu-devices 2                  # data parallel on 2 CPU devices
    python examples/image_classification.py --dataset mnist   # downloads
    python examples/image_classification.py --help

Expected result (digits, default flags, seed 0, 2 CPU cores): about 98.5%
test accuracy (target: 97%) in about 2 minutes; exits non-zero if the
export's answers differ from the model's. Measured: examples/RESULTS.md.
"""

import dataclasses
import io
import json
import os
import sys
import time

import _common  # noqa: F401  (before keras: it may split the CPU)
import keras
import numpy as np
from keras import ops

import keras_attention as ka


# Setup ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model needs to know about a dataset, and its defaults."""

    image_shape: tuple  # (height, width, channels)
    num_classes: int
    patch_size: int  # ViT patches; the conv stem downsamples by this too
    epochs: int
    batch_size: int
    class_names: tuple


DATASETS = {
    "digits": DatasetInfo(
        (8, 8, 1), 10, 2, 60, 64, tuple(str(i) for i in range(10))
    ),
    "mnist": DatasetInfo(
        (28, 28, 1), 10, 4, 10, 128, tuple(str(i) for i in range(10))
    ),
    "cifar10": DatasetInfo(
        (32, 32, 3),
        10,
        4,
        30,
        128,
        (
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
    ),
}


def add_arguments(parser):
    group = parser.add_argument_group("image_classification")
    group.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="digits",
        help="digits: scikit-learn's 8x8 digits (offline); mnist, cifar10: "
        "keras.datasets (downloads) (default: %(default)s)",
    )
    group.add_argument(
        "--model",
        choices=["vit", "conv-attention"],
        default="vit",
        help="vit: patches and Transformer blocks; conv-attention: a conv "
        "stem and MultiHeadAttention(attention_axes=(1, 2)) over its 2-D "
        "feature map (default: %(default)s)",
    )
    group.add_argument(
        "--head",
        choices=["pool", "cls"],
        default="pool",
        help="pool: AttentionPooling over the patches; cls: a learned "
        "class token, read out after the last block (default: %(default)s)",
    )
    group.add_argument(
        "--position",
        choices=["learned", "sinusoidal"],
        default="learned",
        help="PositionEmbedding or SinusoidalPositionEncoding "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="patch side in pixels (default: 2 for digits, 4 for mnist and "
        "cifar10)",
    )
    group.add_argument(
        "--hidden-dim",
        type=int,
        default=64,
        help="width of the patch embeddings and blocks (default: %(default)s)",
    )
    group.add_argument(
        "--num-layers",
        type=int,
        default=4,
        help="Transformer blocks (conv-attention: half as many attention "
        "blocks, at least 1) (default: %(default)s)",
    )
    group.add_argument(
        "--num-heads", type=int, default=4, help="(default: %(default)s)"
    )
    group.add_argument(
        "--mlp-dim",
        type=int,
        default=128,
        help="hidden size of each block's feed-forward network "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--dropout", type=float, default=0.1, help="(default: %(default)s)"
    )
    group.add_argument(
        "--learning-rate",
        type=float,
        default=2e-3,
        help="AdamW peak learning rate, after a linear warm-up over the first "
        "10%% of the steps; then cosine decay (default: %(default)s)",
    )
    group.add_argument(
        "--weight-decay",
        type=float,
        default=1e-4,
        help="(default: %(default)s)",
    )
    group.add_argument(
        "--train-samples",
        type=int,
        default=None,
        help="use only the first N training images (smoke tests)",
    )
    group.add_argument(
        "--test-samples",
        type=int,
        default=None,
        help="use only the first N test images (smoke tests)",
    )


# Data --------------------------------------------------------------------
def load_digits(seed):
    """scikit-learn's 8x8 digits as uint8 `(n, 8, 8, 1)`, split 75/25."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    # 17 grey levels, 0..16, spread over 0..255 like any 8-bit image.
    images = np.round(digits.images * (255.0 / 16.0)).astype("uint8")
    x_train, x_test, y_train, y_test = train_test_split(
        images[..., None],
        digits.target.astype("int32"),
        test_size=0.25,
        stratify=digits.target,
        random_state=seed,
    )
    return (x_train, y_train), (x_test, y_test)


def load_keras_dataset(name, load_data=None):
    """A `keras.datasets` dataset as uint8 `(n, h, w, c)` and int32 labels.

    `load_data` defaults to `keras.datasets.<name>.load_data` (looked up
    when called, so tests can replace it); it returns `(x_train, y_train),
    (x_test, y_test)` in that module's format: MNIST images are `(n, 28,
    28)` uint8 with labels `(n,)`, CIFAR-10 images `(n, 32, 32, 3)` uint8
    with labels `(n, 1)`.
    """
    info = DATASETS[name]
    if load_data is None:
        load_data = getattr(keras.datasets, name).load_data
    splits = []
    for images, labels in load_data():
        images = np.asarray(images)
        if images.ndim == 3:  # grey images without a channel axis
            images = images[..., None]
        if images.shape[1:] != info.image_shape:
            raise ValueError(
                f"{name}: expected images of shape (n,) + "
                f"{info.image_shape}, got {images.shape}"
            )
        if images.dtype != np.uint8:
            raise ValueError(f"{name}: expected uint8, got {images.dtype}")
        labels = np.asarray(labels).reshape(-1).astype("int32")
        if len(labels) != len(images):
            raise ValueError(
                f"{name}: {len(images)} images but {len(labels)} labels"
            )
        splits.append((images, labels))
    return tuple(splits)


def load_dataset(name, seed, load_data=None):
    """`(x_train, y_train), (x_test, y_test)`: uint8 images, int32 labels."""
    if name == "digits":
        return load_digits(seed)
    return load_keras_dataset(name, load_data)


# Model -------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="image_classification")
class ClassToken(keras.layers.Layer):
    """Prepends one learned vector (the class token) to a sequence."""

    def __init__(self, initializer="truncated_normal", **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.token = self.add_weight(
            name="token",
            shape=(1, 1, input_shape[-1]),
            initializer=self.initializer,
        )

    def call(self, inputs):
        batch, dim = ops.shape(inputs)[0], ops.shape(inputs)[2]
        token = ops.cast(self.token, inputs.dtype)
        token = ops.broadcast_to(token, (batch, 1, dim))
        return ops.concatenate([token, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], length, input_shape[2])

    def get_config(self):
        config = super().get_config()
        config["initializer"] = keras.initializers.serialize(self.initializer)
        return config


def build_vit(info, args):
    """The ViT classifier, and a model that also returns its attention.

    Both share every layer. The second returns `{"probabilities", "blocks":
    [(batch, heads, tokens, tokens) per block], "head": (batch, heads,
    tokens)}` ("head" only with the pooling head).
    """
    pixels = keras.Input(info.image_shape, dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1.0 / 255, name="rescaling")(pixels)
    x = ka.PatchEmbedding(args.patch_size, args.hidden_dim, name="patches")(x)
    if args.head == "cls":
        x = ClassToken(name="class_token")(x)
    if args.position == "learned":
        positions = ka.PositionEmbedding(x.shape[1], name="positions")(x)
    else:
        positions = ka.SinusoidalPositionEncoding(name="positions")(x)
    x = keras.layers.Add(name="add_positions")([x, positions])
    x = keras.layers.Dropout(args.dropout)(x)
    block_scores = []
    for i in range(args.num_layers):
        x, scores = ka.TransformerEncoder(
            intermediate_dim=args.mlp_dim,
            num_heads=args.num_heads,
            dropout=args.dropout,
            activation="gelu",
            normalize_first=True,
            name=f"block_{i}",
        )(x, return_attention_scores=True)
        block_scores.append(scores)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")(x)
    attention = {"blocks": block_scores}
    if args.head == "cls":
        x = x[:, 0]  # the class token
    else:
        x, attention["head"] = ka.AttentionPooling(
            units=args.hidden_dim, num_heads=2, name="pooling"
        )(x, return_attention_scores=True)
    probabilities = keras.layers.Dense(
        info.num_classes,
        activation="softmax",
        dtype="float32",  # softmax in float32 under mixed precision
        name="probabilities",
    )(x)
    model = keras.Model(pixels, probabilities, name="vit")
    explainer = keras.Model(
        pixels, {"probabilities": probabilities, **attention}, name="vit_attn"
    )
    return model, explainer


def build_conv_attention(info, args):
    """A conv stem, attention over its 2-D map, attention pooling."""
    pixels = keras.Input(info.image_shape, dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1.0 / 255, name="rescaling")(pixels)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="gelu")(x)
    if args.patch_size > 1:  # downsample to (height / p, width / p)
        x = keras.layers.Conv2D(
            args.hidden_dim, args.patch_size, strides=args.patch_size
        )(x)
    else:
        x = keras.layers.Conv2D(args.hidden_dim, 3, padding="same")(x)
    height, width, channels = x.shape[1:]
    for i in range(max(1, args.num_layers // 2)):
        # Pre-norm residual attention over (height, width) jointly: every
        # position of the map attends to all height * width positions.
        y = keras.layers.LayerNormalization(name=f"norm_{i}")(x)
        y = ka.MultiHeadAttention(
            num_heads=args.num_heads,
            key_dim=channels // args.num_heads,
            attention_axes=(1, 2),
            dropout=args.dropout,
            name=f"attention_2d_{i}",
        )(y, y)
        x = keras.layers.Add()([x, y])
        y = keras.layers.LayerNormalization(name=f"mlp_norm_{i}")(x)
        y = keras.layers.Dense(args.mlp_dim, activation="gelu")(y)
        y = keras.layers.Dense(channels)(y)
        x = keras.layers.Add()([x, keras.layers.Dropout(args.dropout)(y)])
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    x = keras.layers.Reshape((height * width, channels))(x)
    x, head = ka.AttentionPooling(
        units=args.hidden_dim, num_heads=2, name="pooling"
    )(x, return_attention_scores=True)
    probabilities = keras.layers.Dense(
        info.num_classes,
        activation="softmax",
        dtype="float32",
        name="probabilities",
    )(x)
    model = keras.Model(pixels, probabilities, name="conv_attention")
    explainer = keras.Model(
        pixels,
        {"probabilities": probabilities, "head": head},
        name="conv_attention_attn",
    )
    return model, explainer


def build_models(info, args):
    if args.model == "vit":
        return build_vit(info, args)
    return build_conv_attention(info, args)


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.time() - self.start)


# Evaluation --------------------------------------------------------------
def attention_maps(explainer, images, grid):
    """Where the head looks, per image: `(n, grid_h, grid_w)`, summing to 1.

    Attention rollout (Abnar and Zuidema, 2020): each block's attention,
    averaged over heads, is mixed half and half with the identity (the
    residual connection) and the blocks' matrices are multiplied, which
    traces how much each input patch flows into each output token. The
    head then reads the tokens: the class token's row, or the pooling
    weights (averaged over the pooling heads) times the rollout.
    """
    outputs = explainer.predict(images, verbose=0)
    blocks = [np.asarray(s, "float64") for s in outputs.get("blocks", [])]
    if "head" in outputs:
        reads = np.asarray(outputs["head"], "float64").mean(1)  # (n, tokens)
    else:  # the class token, token 0, reads the others
        tokens = blocks[0].shape[-1]
        reads = np.zeros((len(images), tokens))
        reads[:, 0] = 1.0
    rollout = np.eye(reads.shape[-1])[None]
    for scores in blocks:
        mixed = 0.5 * scores.mean(1) + 0.5 * np.eye(scores.shape[-1])
        mixed /= mixed.sum(-1, keepdims=True)
        rollout = mixed @ rollout
    maps = np.einsum("nt,nts->ns", reads, rollout)
    maps = maps[:, -grid[0] * grid[1] :]  # the patches (not the class token)
    maps /= maps.sum(-1, keepdims=True)
    return maps.reshape((-1,) + tuple(grid)), outputs["probabilities"]


def plot_attention(
    images, labels, maps, probabilities, class_names, title, path
):
    """Test images, the attention over their patches, and both overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    height, width = images.shape[1:3]
    grey = images.shape[-1] == 1
    fig, axes = plt.subplots(3, n, figsize=(1.25 * n, 4.4), squeeze=False)
    for i in range(n):
        image = images[i, ..., 0] if grey else images[i]
        # Nearest upsampling to the image size: each patch's weight covers
        # its pixels.
        scale = (height // maps.shape[1], width // maps.shape[2])
        upsampled = np.kron(maps[i], np.ones(scale))
        predicted = int(np.argmax(probabilities[i]))
        axes[0, i].imshow(
            image,
            cmap="gray" if grey else None,
            vmin=0,
            vmax=255,
            interpolation="nearest",
        )
        axes[1, i].imshow(
            upsampled, cmap="inferno", vmin=0, interpolation="nearest"
        )
        axes[2, i].imshow(
            image,
            cmap="gray" if grey else None,
            vmin=0,
            vmax=255,
            interpolation="nearest",
        )
        axes[2, i].imshow(
            upsampled,
            cmap="inferno",
            vmin=0,
            alpha=0.55,
            interpolation="bilinear",
        )
        axes[0, i].set_title(f"label {class_names[labels[i]]}", fontsize=9)
        axes[1, i].set_title(
            f"pred {class_names[predicted]} {probabilities[i, predicted]:.2f}",
            fontsize=8,
            color="black" if predicted == labels[i] else "red",
        )
        for row in range(3):
            axes[row, i].set_xticks([])
            axes[row, i].set_yticks([])
    axes[0, 0].set_ylabel("input", fontsize=9)
    axes[1, 0].set_ylabel("attention", fontsize=9)
    axes[2, 0].set_ylabel("overlay", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def one_per_class(labels, num_classes):
    """Indices of the first test image of each class."""
    return np.array(
        [
            np.flatnonzero(labels == c)[0]
            for c in range(num_classes)
            if np.any(labels == c)
        ]
    )


# Export ------------------------------------------------------------------
def export(run, model, info, sample_images):
    """Exports `pixels` (uint8) and `image_bytes` (PNG) signatures; from
    another backend, `pixels` only (the PNG endpoint is a TensorFlow
    function)."""
    if not run.args.export:
        return None
    if run.backend != "tensorflow":
        print(
            "endpoint serving_bytes (PNG bytes): a TensorFlow function, "
            "exported by TensorFlow runs only; this run exports "
            "serving_default (pixels)"
        )
        return run.export(model, warmup_inputs={"pixels": sample_images})
    import tensorflow as tf

    height, width, channels = info.image_shape

    def decode(png):
        image = tf.io.decode_png(png, channels=channels)
        # Other sizes are resized to the model's (a no-op at its size).
        image = tf.image.resize(image, (height, width), antialias=True)
        image = tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)
        return tf.ensure_shape(image, info.image_shape)

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
        autograph=False,
    )
    def serving_bytes(image_bytes):
        pixels = tf.map_fn(
            decode,
            image_bytes,
            fn_output_signature=tf.TensorSpec(info.image_shape, tf.uint8),
        )
        return {"probabilities": model(pixels, training=False)}

    return run.export(
        model,
        signatures={"serving_bytes": serving_bytes},
        warmup_inputs={"pixels": sample_images},
    )


def encode_png(images):
    """uint8 `(n, h, w, c)` images as PNG bytes (with matplotlib's Pillow)."""
    from PIL import Image

    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            buffer, format="PNG"
        )
        encoded.append(buffer.getvalue())
    return np.array(encoded, dtype=object)


def check_served(path, images, expected):
    """Reloads the export; both signatures must match the Keras model (from
    another backend: `serving_default`, through `serving.check`)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return _common.check_served_outputs(
            path,
            {"pixels": images},
            {"probabilities": expected},
            f"{len(images)} test images",
        )
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    served = {
        "serving_default": loaded.signatures["serving_default"](
            pixels=tf.constant(images)
        ),
        "serving_bytes": loaded.signatures["serving_bytes"](
            image_bytes=tf.constant(encode_png(images))
        ),
    }
    ok = True
    for name, outputs in served.items():
        diff = float(
            np.max(np.abs(outputs["probabilities"].numpy() - expected))
        )
        match = diff < 1e-4
        ok = ok and match
        print(
            f"served ({name}) vs Keras on {len(images)} test images: max abs "
            f"diff {diff:.2e} ({'match' if match else 'DIFFER'})"
        )
    return ok


# Main --------------------------------------------------------------------
def main(argv=None):
    args = _common.parse_args(
        __doc__,
        "image_classification",
        argv=argv,
        add_arguments=add_arguments,
        epochs=None,
        batch_size=None,
    )
    info = DATASETS[args.dataset]
    args.epochs = args.epochs or info.epochs
    args.batch_size = args.batch_size or info.batch_size
    args.patch_size = args.patch_size or info.patch_size
    run = _common.setup(args)

    (x_train, y_train), (x_test, y_test) = load_dataset(args.dataset, args.seed)
    x_train, y_train = (
        x_train[: args.train_samples],
        y_train[: args.train_samples],
    )
    x_test, y_test = x_test[: args.test_samples], y_test[: args.test_samples]
    print(
        f"data: {args.dataset}, {len(x_train)} training and {len(x_test)} "
        f"test images of shape {x_train.shape[1:]} ({x_train.dtype}), "
        f"{info.num_classes} classes"
    )

    steps = run.steps(len(x_train), args.batch_size)
    if steps * args.batch_size < len(x_train):
        # --max-steps: every epoch goes over the same first `steps` batches
        # (a longer array would run out of data in later epochs instead).
        x_train = x_train[: steps * args.batch_size]
        y_train = y_train[: steps * args.batch_size]
    with run.scope():
        model, explainer = build_models(info, args)
        total = steps * args.epochs
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=max(1, total - total // 10),
            warmup_target=args.learning_rate,
            warmup_steps=total // 10,
            alpha=0.01,
        )
        model.compile(
            optimizer=keras.optimizers.AdamW(
                schedule, weight_decay=args.weight_decay, clipnorm=1.0
            ),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=run.jit_compile,
        )
    model.summary()
    print(f"model: {model.name}, {model.count_params():,} parameters")

    # Training --------------------------------------------------------------
    timer = EpochTimer()
    history = model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=steps,
        shuffle=args.shuffle,
        callbacks=[timer],
    )
    run.save_weights(model)
    losses = [float(x) for x in history.history["loss"]]
    with open(os.path.join(args.output_dir, "history.json"), "w") as f:
        json.dump(
            {**history.history, "epoch_seconds": timer.seconds}, f, indent=1
        )
    train_seconds = run.elapsed()
    print(
        f"trained in {train_seconds:.0f} s (since setup); per epoch: median "
        f"{np.median(timer.seconds):.2f} s, first {timer.seconds[0]:.2f} s"
    )

    # Evaluation ------------------------------------------------------------
    test_loss, test_accuracy = model.evaluate(
        x_test, y_test, batch_size=args.batch_size, verbose=0
    )
    print(f"test accuracy: {test_accuracy:.2%} (loss {test_loss:.4f})")

    shown = one_per_class(y_test, info.num_classes)
    grid = (
        info.image_shape[0] // args.patch_size,
        info.image_shape[1] // args.patch_size,
    )
    maps, shown_probabilities = attention_maps(explainer, x_test[shown], grid)
    if args.model == "vit":
        title = (
            f"Where the {args.head} head looks: attention rollout through "
            f"{args.num_layers} blocks over the {grid[0]}x{grid[1]} patches"
        )
    else:
        title = (
            f"Attention pooling weights over the {grid[0]}x{grid[1]} conv "
            "feature map"
        )
    figure = run.figure_path("attention.png")
    plot_attention(
        x_test[shown],
        y_test[shown],
        maps,
        shown_probabilities,
        info.class_names,
        f"{title} ({args.dataset} test images)",
        figure,
    )
    print(f"saved {figure}")

    # The export must give these answers.
    check_images = x_test[:16]
    expected = model.predict(check_images, verbose=0)
    np.savez(
        os.path.join(args.output_dir, "predictions.npz"),
        pixels=check_images,
        probabilities=expected,
    )
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(
            {
                "test_accuracy": test_accuracy,
                "test_loss": test_loss,
                "loss": losses,
                "train_seconds": train_seconds,
                "epoch_seconds": timer.seconds,
                "backend": run.backend,
                "args": {k: v for k, v in vars(args).items() if k != "name"},
            },
            f,
            indent=1,
        )

    # Export ----------------------------------------------------------------
    path = export(run, model, info, x_test[:4])
    if path is not None:
        if not check_served(path, check_images, expected):
            return 1
        print(f"export size: {_common.directory_size(path) / 1e6:.2f} MB")
    print(f"done in {run.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
