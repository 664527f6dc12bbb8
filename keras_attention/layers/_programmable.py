"""The programmable attention of `MultiHeadAttention`: `score_mod` and
`mask_mod` (stored in configs by their registered names), attention sinks,
segment ids, and which query rows still attend a key.

The rules of the functions, the ids and the sinks are those of
`keras_attention.ops.scaled_dot_product_attention`; this module turns the
layer's arguments into that op's.
"""

import keras
from keras import ops

from keras_attention import _validation

_REGISTER = (
    "decorate it with `@keras.saving.register_keras_serializable("
    'package="my_package")` (a `def`, not a lambda)'
)


def get_mod(name, value):
    """`score_mod` / `mask_mod` from a constructor argument: None, a
    function, or the registered name of one (as `get_config` stores it)."""
    if value is None or (callable(value) and not isinstance(value, str)):
        return value
    if isinstance(value, str):
        fn = keras.saving.get_registered_object(value)
        if fn is None or not callable(fn):
            raise ValueError(
                f"Argument `{name}` names no registered function. Register "
                f"it before loading: {_REGISTER}. Received: {name}={value!r}"
            )
        return fn
    raise ValueError(
        f"Argument `{name}` must be a function, the registered name of one, "
        f"or None. Received: {name}={_validation.short_repr(value)}"
    )


def serialize_mod(name, fn):
    """The registered name of `fn` for a config (None stays None).

    Lambdas and unregistered functions are refused, where Keras would store
    a lambda's bytecode (which breaks across Python versions and loads only
    with `safe_mode=False`)."""
    if fn is None:
        return None
    registered = keras.saving.get_registered_name(fn)
    if keras.saving.get_registered_object(registered) is not fn:
        raise ValueError(
            f"Argument `{name}` must be a registered function for the layer "
            f"to be saved (its config stores the registered name): "
            f"{_REGISTER}. Received: {name}={_validation.short_repr(fn)}"
        )
    return registered


def serialize_mods(layer):
    """The config entries of `layer.score_mod` and `layer.mask_mod`."""
    return {
        name: serialize_mod(name, getattr(layer, name))
        for name in ("score_mod", "mask_mod")
    }


def check_mods_layout(score_mod, mask_mod, query_shape, attention_axes):
    """The functions see `(b, h, q_idx, kv_idx)` of one sequence axis, so
    they need rank-3 inputs."""
    if (score_mod is None and mask_mod is None) or len(query_shape) == 3:
        return
    raise ValueError(
        "Arguments `score_mod` and `mask_mod` need rank-3 inputs (batch, "
        "length, dim), one attention axis: their `q_idx` and `kv_idx` are "
        f"positions along one sequence. Received: query.shape="
        f"{tuple(query_shape)}, attention_axes={attention_axes}"
    )


def add_sinks(layer):
    """The `(num_heads,)` sink logits, zeros at first (None without)."""
    if not layer.use_attention_sinks:
        return None
    return layer.add_weight(
        name="sinks", shape=(layer.num_heads,), initializer="zeros"
    )


def check_segment_ids(query_segment_ids, key_segment_ids, q_shape, kv_shape):
    """`q_shape` `(batch, target_length)` and `kv_shape` `(batch, keys)`:
    the keys are the cache's slots with a cache."""
    if query_segment_ids is not None and len(q_shape) != 2:
        raise ValueError(
            "Arguments `query_segment_ids` and `key_segment_ids` need "
            "rank-3 inputs (batch, length, dim), one attention axis. "
            f"Received: query.shape={tuple(q_shape) + (None,)}"
        )
    _validation.check_segment_ids(
        query_segment_ids,
        key_segment_ids,
        (q_shape, kv_shape),
        ("target_length", "source_length"),
        "; with a cache, the keys are the cache's slots, (batch, max_length)",
    )


def segment_mask(query_segment_ids, key_segment_ids):
    """The ids as a Keras-layout `(B, T, S)` mask, for a subclass's
    `_compute_attention` (the op takes the ids themselves)."""
    if query_segment_ids is None:
        return None
    return ops.equal(
        ops.expand_dims(ops.convert_to_tensor(query_segment_ids), -1),
        ops.expand_dims(ops.convert_to_tensor(key_segment_ids), -2),
    )


def op_arguments(layer, extras):
    """The programmable keywords of the op for one call: the layer's
    functions and sinks, and the call's window and ids from `extras`."""
    arguments = {
        "score_mod": layer.score_mod,
        "mask_mod": layer.mask_mod,
        "sinks": getattr(layer, "sinks", None),
    }
    for name in ("sliding_window", "query_segment_ids", "key_segment_ids"):
        arguments[name] = extras.get(name)
    return arguments


def kernel_extras(layer, window, segments, positions):
    """What a call adds to the op's keywords for the layer's own
    `_compute_attention`: the window's size (`window`: `(sliding_window,
    offset)` or None), the segment ids, and `causal_offset`, the position
    of query 0 (`positions`: `(offset, causal_only)`), where the causal
    mask, the window or the functions depend on it."""
    offset, causal_only = positions
    extras = dict(zip(("query_segment_ids", "key_segment_ids"), segments))
    extras["sliding_window"] = None if window is None else window[0]
    positional = (
        causal_only
        or window is not None
        or layer.score_mod is not None
        or layer.mask_mod is not None
    )
    if positional and not (isinstance(offset, int) and offset == 0):
        extras["causal_offset"] = offset
    return extras


def needs_row_check(arguments):
    """Whether only the kernel knows which rows attend no key: with segment
    ids or a user function (the window's rows are found from the band)."""
    return any(
        arguments[name] is not None
        for name in ("score_mod", "mask_mod", "query_segment_ids")
    )


def attend(attention, value, check_rows, dropout_active):
    """Runs `attention(value, main)` (the op on `value`; `main=False`: no
    dropout and no scores) and finds the rows that attend a key.

    Returns `(output, scores, rows)`; `rows` is None unless `check_rows`,
    else a boolean `(batch, q_len)`: some head of the row has a weight.
    A channel of ones on `value` gives each row's sum of weights, zero
    exactly for a fully masked row (see the op). Dropout would zero some
    of those sums, so with dropout a second call without it finds them.
    """
    if not check_rows:
        return attention(value, True) + (None,)
    ones = ops.ones_like(value[..., :1])
    if dropout_active:
        total, _ = attention(ones, False)
        output, scores = attention(value, True)
    else:
        output, scores = attention(ops.concatenate([value, ones], -1), True)
        output, total = output[..., :-1], output[..., -1:]
    # NaN counts as attended, so that NaN propagates.
    return output, scores, ops.any(ops.not_equal(total[..., 0], 0), axis=2)
