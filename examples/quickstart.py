"""Quickstart: a small attention classifier, trained, saved, exported, served.

What it shows:
    A functional Keras model that uses all three keras_attention layers on
    padded token sequences: `MultiHeadAttention` (self-attention with the
    padding mask from `Embedding(mask_zero=True)`), `AdditiveAttention`
    (Bahdanau attention of the contextual tokens over the raw embeddings) and
    `AttentionPooling` (the classifier head). It trains for a few seconds on
    generated data, saves the model to `.keras`, reloads it and checks that
    the reloaded model gives the same outputs. Then it exports the model for
    TensorFlow Serving with `keras_attention.serving.export_saved_model` to
    `saved_models/quickstart/<next version>/` (with warm-up requests), checks
    the export the way TF Serving loads it (`keras_attention.serving.check`,
    a subprocess that cannot import Keras) on test sequences, requiring the
    served outputs to equal this model's predictions within 1e-5, and prints
    those predictions.

The task (generated deterministically, offline): sequences of 4 to 24 tokens
from a vocabulary of 1..31, zero-padded to 24. The label says whether the
sequence holds more "high" tokens (>= 16) than "low" ones. Padding must be
ignored to get it right: a model that counted the padding would fail.

How to run:
    python examples/quickstart.py            # about 15 s on 2 CPU cores
    python examples/quickstart.py --help

Expected result: test accuracy above 0.9 after the default 4 epochs, then
"reloaded model: outputs match (max abs diff 0.0)", "CHECK PASSED" and a few
served predictions with their labels. The script exits non-zero if the
reloaded model's outputs differ or the export check fails. Under another
backend (`KERAS_BACKEND=jax` or `KERAS_BACKEND=torch`), the export runs in a
TensorFlow subprocess from the saved `.keras` file; where TensorFlow isn't
installed, the script says so and skips the export.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import keras
import numpy as np

import keras_attention as ka

VOCAB = 32
MAX_LEN = 24


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output-dir", default=os.path.join("runs", "quickstart")
    )
    parser.add_argument(
        "--saved-models-dir",
        default="saved_models",
        help="exports go to <dir>/quickstart/<next version>/",
    )
    return parser.parse_args(argv)


# Data --------------------------------------------------------------------
def make_data(num_samples, seed):
    """Zero-padded token sequences and balanced "more high than low" labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, MAX_LEN + 1, size=num_samples)
    tokens = rng.integers(1, VOCAB, size=(num_samples, MAX_LEN))
    tokens[np.arange(MAX_LEN)[None, :] >= lengths[:, None]] = 0
    high = (tokens >= 16).sum(1)
    low = ((tokens > 0) & (tokens < 16)).sum(1)
    labels = (high > low).astype("int32")
    return tokens.astype("int32"), labels


# Model -------------------------------------------------------------------
def build_model():
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    embedded = keras.layers.Embedding(VOCAB, 32, mask_zero=True)(tokens)
    context = ka.MultiHeadAttention(num_heads=4, key_dim=8)(embedded, embedded)
    hidden = keras.layers.LayerNormalization()(
        keras.layers.Add()([embedded, context])
    )
    attended = ka.AdditiveAttention(units=16)(hidden, embedded)
    pooled = ka.AttentionPooling(units=16, num_heads=2)(
        keras.layers.Concatenate()([hidden, attended])
    )
    probabilities = keras.layers.Dense(
        2, activation="softmax", name="probabilities"
    )(pooled)
    return keras.Model(tokens, probabilities, name="quickstart")


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    print(
        f"keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"keras_attention {ka.__version__}"
    )

    x, y = make_data(args.samples, args.seed)
    x_test, y_test = make_data(1024, args.seed + 1)

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    # Training --------------------------------------------------------------
    start = time.time()
    model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_split=0.1,
    )
    print(f"trained in {time.time() - start:.1f} s")

    # Evaluation ------------------------------------------------------------
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy: {accuracy:.3f}")

    # Save and reload -------------------------------------------------------
    path = os.path.join(args.output_dir, "quickstart.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    expected = model.predict(x_test, verbose=0)
    got = reloaded.predict(x_test, verbose=0)
    diff = float(np.max(np.abs(expected - got)))
    print(f"saved to {path}")
    if not np.allclose(expected, got, rtol=0, atol=1e-6):
        print(f"reloaded model: outputs DIFFER (max abs diff {diff})")
        return 1
    print(f"reloaded model: outputs match (max abs diff {diff})")

    # Export for TF Serving ------------------------------------------------
    return export_and_serve(model, args, x_test, y_test)


def export_and_serve(model, args, x_test, y_test):
    """Exports (under JAX or PyTorch through a TensorFlow subprocess), then
    checks that the export serves this process's predictions."""
    from keras_attention import serving

    base_path = os.path.join(args.saved_models_dir, "quickstart")
    try:
        path = serving.export_saved_model(
            model, base_path, warmup_inputs={"tokens": x_test[:8]}
        )
    except ImportError as e:  # no TensorFlow here (e.g. on a GPU box)
        print(f"export skipped: {e}")
        return 0
    print(f"exported to {path}")
    expected = model.predict(x_test[:5], verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        request = os.path.join(tmp, "request.json")
        with open(request, "w") as f:
            json.dump(serving.rest_body({"tokens": x_test[:5]}), f)
        outputs = os.path.join(tmp, "expected.npz")
        np.savez(outputs, probabilities=expected)
        if serving.check(path, inputs=request, expect=outputs).returncode:
            print("export check FAILED")
            return 1
    print(
        "served predictions (serving_default; equal to this model's within "
        "1e-5, checked above):"
    )
    for tokens, probs, label in zip(x_test[:5], expected, y_test):
        text = " ".join(str(t) for t in tokens[tokens > 0])
        print(f"  [{text}] -> P(more high)={probs[1]:.3f}, label {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
