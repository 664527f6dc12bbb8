"""Generates reference outputs from real tensorflow-addons (opt-in).

`tests/compat/test_tfa_reference.py` checks the compat layers against the
files this script writes; it needs neither tfa nor this script. Run this only
to regenerate them, in a separate environment with the last TensorFlow that
tfa supports (Python 3.11):

    python3.11 -m venv /tmp/tfa-venv
    /tmp/tfa-venv/bin/pip install "tensorflow-cpu==2.15.*" \\
        "tensorflow-addons==0.23.0" "numpy<2"
    /tmp/tfa-venv/bin/python tests/compat/make_tfa_reference.py

It writes, next to itself:

- `tfa_reference.npz`: for each case, the inputs, the weights
  (`get_weights()` order), the outputs of `tfa.layers.MultiHeadAttention` or
  `tfa.seq2seq.BahdanauAttention` (with the context that tfa's
  `AttentionWrapper` computes), the layer's config as tf.keras serializes
  it, and the weight names and shapes.
- `tfa_mha_model.h5` and `tfa_mha_model_nomask.h5`: small functional
  tf.keras models around a tfa `MultiHeadAttention`, with and without a
  `mask` input, saved in the legacy HDF5 format, with their inputs and
  outputs in the npz.

Weights are fixed (drawn from a seeded NumPy generator, not the layers'
initializers), so the outputs depend only on tfa's formulas.
"""

import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_addons as tfa
from tensorflow_addons.seq2seq import attention_wrapper

HERE = os.path.dirname(os.path.abspath(__file__))
RNG = np.random.default_rng(20240601)


def normal(*shape, scale=1.0):
    return (scale * RNG.normal(size=shape)).astype("float32")


def set_fixed_weights(layer):
    weights = []
    for w in layer.get_weights():
        if w.ndim == 0:  # attention_g
            weights.append(np.asarray(0.7, "float32"))
        else:
            weights.append(normal(*w.shape, scale=0.5))
    layer.set_weights(weights)
    return weights


def weight_info(layer):
    return json.dumps(
        [[w.name, list(w.shape)] for w in layer.weights], sort_keys=True
    )


def mha_case(out, name, init, inputs, mask=None):
    layer = tfa.layers.MultiHeadAttention(**init)
    layer(inputs, mask=mask)
    weights = set_fixed_weights(layer)
    result = layer(inputs, mask=mask)
    if init.get("return_attn_coef"):
        output, coef = result
        out[f"{name}/coef"] = coef.numpy()
    else:
        output = result
    out[f"{name}/output"] = output.numpy()
    for i, x in enumerate(inputs):
        out[f"{name}/input_{i}"] = x
    if mask is not None:
        out[f"{name}/mask"] = mask
    for i, w in enumerate(weights):
        out[f"{name}/weight_{i}"] = w
    out[f"{name}/config"] = np.array(
        json.dumps(tf.keras.layers.serialize(layer), sort_keys=True)
    )
    out[f"{name}/weight_info"] = np.array(weight_info(layer))


def bahdanau_case(out, name, init, query, memory, lengths=None, mask=None):
    mechanism = tfa.seq2seq.BahdanauAttention(**init)

    def run():
        # setup_memory is re-run after set_weights: tfa caches the projected
        # memory (the keys) when the memory is set up.
        mechanism.setup_memory(
            memory, memory_sequence_length=lengths, memory_mask=mask
        )
        state = mechanism.initial_alignments(query.shape[0], tf.float32)
        context, alignments, _ = attention_wrapper._compute_attention(
            mechanism, tf.constant(query), state, None
        )
        return context.numpy(), alignments.numpy()

    run()
    weights = set_fixed_weights(mechanism)
    context, alignments = run()
    out[f"{name}/query"] = query
    out[f"{name}/memory"] = memory
    if lengths is not None:
        out[f"{name}/memory_sequence_length"] = lengths
    if mask is not None:
        out[f"{name}/memory_mask"] = mask
    out[f"{name}/context"] = context
    out[f"{name}/alignments"] = alignments
    for i, w in enumerate(weights):
        out[f"{name}/weight_{i}"] = w
    out[f"{name}/config"] = np.array(
        json.dumps(mechanism.get_config(), sort_keys=True, default=str)
    )
    out[f"{name}/weight_info"] = np.array(weight_info(mechanism))


def mha_models(out):
    """Two legacy HDF5 models: with `mask=` (a model input) and without.

    Keras 3 loads the second with `keras.models.load_model`; the first must be
    rebuilt in code and loaded with `load_weights`, because Keras 3's legacy
    loader does not reconnect tensors passed as keyword arguments.
    """
    for name, masked in (("model", True), ("model_nomask", False)):
        query = tf.keras.Input((5, 6), name="query")
        key = tf.keras.Input((4, 7), name="key")
        inputs = [query, key]
        kwargs = {}
        if masked:
            kwargs["mask"] = tf.keras.Input((5, 4), name="mask")
            inputs.append(kwargs["mask"])
        x = tfa.layers.MultiHeadAttention(head_size=3, num_heads=2, name="mha")(
            [query, key], **kwargs
        )
        y = tf.keras.layers.Dense(2, name="head")(x)
        model = tf.keras.Model(inputs, y)
        for layer in model.layers:
            if layer.weights:
                set_fixed_weights(layer)
        data = [normal(3, 5, 6), normal(3, 4, 7)]
        out[f"{name}/query"], out[f"{name}/key"] = data
        if masked:
            data.append(mask_with_empty_row(3, 5, 4))
            out[f"{name}/mask"] = data[-1]
        out[f"{name}/output"] = model.predict(data, verbose=0)
        model.save(os.path.join(HERE, f"tfa_mha_{name}.h5"))


def mask_with_empty_row(batch, q_len, k_len):
    mask = (RNG.random((batch, q_len, k_len)) > 0.4).astype("float32")
    mask[..., 0] = 1.0
    mask[0, 1, :] = 0.0  # tfa attends every key uniformly in this row
    return mask


def main():
    out = {}
    q, k, v = normal(2, 5, 6), normal(2, 4, 7), normal(2, 4, 3)
    mha_case(
        out,
        "mha_basic",
        dict(head_size=4, num_heads=3, return_attn_coef=True),
        [q, k, v],
    )
    mha_case(
        out,
        "mha_mask",
        dict(
            head_size=4,
            num_heads=3,
            output_size=9,
            use_projection_bias=False,
            return_attn_coef=True,
        ),
        [q, k, v],
        mask=mask_with_empty_row(2, 5, 4),
    )
    mha_case(
        out,
        "mha_key_only",
        dict(head_size=2, num_heads=2),
        [q, k],
        mask=(RNG.random((2, 5, 4)) > 0.3).astype("float32"),
    )
    head_mask = (RNG.random((2, 3, 5, 4)) > 0.3).astype("float32")
    head_mask[..., 2] = 1.0
    mha_case(
        out,
        "mha_head_mask",
        dict(head_size=4, num_heads=3, return_attn_coef=True),
        [q, k, v],
        mask=head_mask,
    )
    mha_case(
        out,
        "mha_rank4",
        dict(head_size=3, num_heads=2, output_size=4, return_attn_coef=True),
        [normal(2, 3, 5, 6), normal(2, 3, 4, 7)],
        mask=(RNG.random((2, 3, 5, 4)) > 0.3).astype("float32"),
    )

    query, memory = normal(3, 6), normal(3, 5, 4)
    lengths = np.array([5, 2, 3], "int32")
    bahdanau_case(out, "bahdanau_plain", dict(units=7), query, memory)
    bahdanau_case(
        out, "bahdanau_lengths", dict(units=7), query, memory, lengths=lengths
    )
    bahdanau_case(
        out,
        "bahdanau_normalize",
        dict(units=7, normalize=True),
        query,
        memory,
        lengths=lengths,
    )
    memory_mask = RNG.random((3, 5)) > 0.4
    memory_mask[0] = False  # no valid position: uniform alignments
    memory_mask[1, 0] = True
    memory_mask[2, 4] = True
    bahdanau_case(
        out,
        "bahdanau_mask",
        dict(units=7, normalize=True),
        query,
        memory,
        mask=memory_mask,
    )
    bahdanau_case(
        out,
        "bahdanau_hardmax",
        dict(units=7, probability_fn="hardmax"),
        query,
        memory,
        lengths=lengths,
    )
    mha_models(out)
    out["versions"] = np.array(
        json.dumps(
            {
                "tensorflow": tf.__version__,
                "tensorflow_addons": tfa.__version__,
                "numpy": np.__version__,
            },
            sort_keys=True,
        )
    )
    path = os.path.join(HERE, "tfa_reference.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes) and tfa_mha_*.h5")


if __name__ == "__main__":
    main()
