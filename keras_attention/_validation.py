"""Argument, shape and config checks: the one validation module.

Used by `ops`, `layers` and `compat` alike.

Every check runs on static shapes and Python values only, so it costs nothing
at run time and fires before any tensor is allocated. Messages follow the Keras
style: they name the argument, say what was expected and what was received.
"""

import functools
import inspect
import math
import numbers

import keras
import numpy as np

# The most elements one weight of a layer may have. A larger weight is a
# mistake (e.g. `num_heads=10**9`) or a tampered config: it would need 8 GiB
# or more in float32, and int32 indexing cannot address it. The largest
# attention projection in use today (d_model 16384) has 2**28 elements.
MAX_WEIGHT_ELEMENTS = 2**31 - 1
# Seeds seed a `keras.random.SeedGenerator`, whose JAX state is uint32.
_SEED_RANGE = (0, 2**32 - 1)


def check_positive_int(name, value, allow_none=False, max_value=None):
    """Raises unless `value` is a positive Python integer (or None), at most
    `max_value` if given."""
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value <= 0
        or (max_value is not None and value > max_value)
    ):
        expected = "a positive integer"
        if max_value is not None:
            expected += f" at most {max_value}"
        expected += " or `None`" if allow_none else ""
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected "
            f"{expected}. Received: {name}={value!r}"
        )


def check_rate(name, value):
    """Raises unless `value` is a real number in [0, 1)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 <= float(value) < 1.0
    ):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a "
            f"float in the range [0, 1). Received: {name}={value!r}"
        )


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a "
            f"Python bool. Received: {name}={value!r}"
        )


def check_seed(seed):
    """Raises unless `seed` is None or an integer in [0, 2**32 - 1], the
    range every backend's `SeedGenerator` accepts."""
    if seed is not None and (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]
    ):
        raise ValueError(
            "Received an invalid value for argument `seed`, expected an "
            f"integer in [0, 2**32 - 1] or `None`. Received: seed={seed!r}"
        )


def check_int32_seed(seed):
    """Raises unless `seed` is None or an integer in [0, 2**31 - 1]: the
    seeds of the counter-based draws (`keras_attention.samplers`)."""
    if seed is not None and (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not 0 <= seed <= 2**31 - 1
    ):
        raise ValueError(
            "Received an invalid value for argument `seed`, expected an "
            f"integer in [0, 2**31 - 1] or `None`. Received: seed={seed!r}"
        )


def check_chunk_size(chunk_size):
    """`chunk_size` is None (dense), "auto" or a positive int32."""
    if chunk_size is None or (
        isinstance(chunk_size, str) and chunk_size == "auto"
    ):
        return
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or not 0 < chunk_size <= MAX_WEIGHT_ELEMENTS
    ):
        raise ValueError(
            "Received an invalid value for argument `chunk_size`, expected "
            '`None`, "auto" or a positive integer (at most 2**31 - 1). '
            f"Received: chunk_size={chunk_size!r}"
        )


def check_flash_attention(flash_attention):
    """`None`, `True` or `False`."""
    if flash_attention is not None and not isinstance(flash_attention, bool):
        raise ValueError(
            "Received an invalid value for argument `flash_attention`, "
            "expected `None`, `True` or `False`. Received: "
            f"flash_attention={short_repr(flash_attention)}"
        )


def check_rank(name, shape, ranks):
    """Raises unless `len(shape)` is one of `ranks`."""
    if len(shape) not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"Argument `{name}` must have rank {expected}. "
            f"Received: {name}.shape={tuple(shape)}"
        )


def check_dims_equal(name_a, dim_a, name_b, dim_b, what):
    """Raises when two static dims are known and differ."""
    if dim_a is not None and dim_b is not None and dim_a != dim_b:
        raise ValueError(
            f"The {what} of `{name_a}` and `{name_b}` must match. "
            f"Received: {name_a} {what}={dim_a}, {name_b} {what}={dim_b}"
        )


def check_broadcastable(name, shape, target_shape, target_desc, given=None):
    """Raises unless `shape` broadcasts to `target_shape` (NumPy rules).

    Unknown (None) dims are accepted on either side: they are checked at run
    time by the backend. `given`: the shape the caller passed, for the
    message, when `shape` is derived from it.
    """
    shape = tuple(shape)
    target_shape = tuple(target_shape)
    ok = len(shape) <= len(target_shape)
    if ok:
        for dim, target in zip(shape[::-1], target_shape[::-1]):
            if dim is None or target is None or dim == 1 or dim == target:
                continue
            ok = False
            break
    if not ok:
        raise ValueError(
            f"Argument `{name}` must be broadcastable to {target_desc} = "
            f"{target_shape}. Received: {name}.shape="
            f"{shape if given is None else tuple(given)}"
        )


def static_shape(x):
    """The static shape of a tensor, KerasTensor or array-like, as a tuple."""
    shape = getattr(x, "shape", None)
    if shape is None:
        shape = np.shape(x)
    return tuple(shape)


def short_repr(value, limit=200):
    """`repr(value)`, cut to `limit` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_weight_shapes(layer, shapes, received):
    """Raises before any weight is created if one would be absurdly large.

    Args:
        layer: the layer's class name, for the message.
        shapes: dict `{weight name: shape}` of the weights to be created.
        received: dict `{argument: value}` of the arguments and input sizes
            that determine the shapes, for the message.
    """
    for weight, shape in shapes.items():
        size = math.prod(int(d) for d in shape)
        if size > MAX_WEIGHT_ELEMENTS:
            args = ", ".join(f"{k}={v!r}" for k, v in received.items())
            raise ValueError(
                f"{layer} would create a weight `{weight}` of shape "
                f"{tuple(shape)}, {size:.3g} elements, more than the "
                f"{MAX_WEIGHT_ELEMENTS} (2**31 - 1) a weight may have. Check "
                f"the arguments. Received: {args}"
            )


def check_size_product(received):
    """Raises when the product of the arguments, a lower bound of a weight's
    element count, is already too large (a constructor's early check).
    A tuple value counts as the product of its entries."""
    size = math.prod(
        math.prod(v) if isinstance(v, tuple) else v for v in received.values()
    )
    if size > MAX_WEIGHT_ELEMENTS:
        args = ", ".join(f"{k}={v!r}" for k, v in received.items())
        names = " * ".join(f"`{k}`" for k in received)
        raise ValueError(
            f"Received arguments whose product {names} = {size:.3g} exceeds "
            f"the {MAX_WEIGHT_ELEMENTS} (2**31 - 1) elements a weight may "
            f"have. Received: {args}"
        )


def get_keras_object(kind, name, identifier):
    """`keras.<kind>.get(identifier)`, raising a ValueError naming `name`.

    `kind` is "initializers", "regularizers" or "constraints". Dict
    identifiers are deserialized by Keras, in Keras' safe mode (no lambdas)
    unless the caller turned it off.
    """
    getter = getattr(keras, kind).get
    try:
        return getter(identifier)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a "
            f"Keras {kind[:-1]} (a name, a config dict or an instance). "
            f"Received: {name}={short_repr(identifier)} ({error})"
        ) from error


@functools.lru_cache(maxsize=None)
def base_layer_keys():
    """The config keys Keras' base layer may add, derived from Keras itself:
    the keyword arguments of `keras.layers.Layer.__init__` and the keys of a
    bare layer's config, plus `input_shape`/`input_dim`, which that
    `__init__` takes through `**kwargs`."""
    params = inspect.signature(keras.layers.Layer.__init__).parameters
    keys = {
        name
        for name, param in params.items()
        if param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)
        and name != "self"
    }
    keys |= set(keras.layers.Layer().get_config())
    return frozenset(keys | {"input_dim", "input_shape"})


def get_initializer(name, identifier):
    """`keras.initializers.get`, with a `ValueError` naming `name`."""
    return get_keras_object("initializers", name, identifier)


def get_regularizer(name, identifier):
    """`keras.regularizers.get`, with a `ValueError` naming `name`."""
    return get_keras_object("regularizers", name, identifier)


def get_constraint(name, identifier):
    """`keras.constraints.get`, with a `ValueError` naming `name`."""
    return get_keras_object("constraints", name, identifier)


def layer_config(cls, config, extra_keys=()):
    """Validates a config for `cls.from_config` and returns a copy.

    Keras' `Layer.from_config` turns every constructor error into a
    `TypeError` that buries the message; our layers' `from_config` calls the
    constructor directly, so a bad field raises the constructor's
    `ValueError`, which names the argument and the received value. This
    checks what the constructor does not: the config's type, unknown and
    missing keys, and the base layer's fields (`dtype`, `autocast`,
    `activity_regularizer`). `extra_keys` are keys the caller handles
    itself.
    """
    if not isinstance(config, dict):
        raise ValueError(
            f"Argument `config` of `{cls.__name__}.from_config` must be a "
            f"dict. Received: config={short_repr(config)}"
        )
    params = [
        param
        for name, param in inspect.signature(cls.__init__).parameters.items()
        if name != "self"
        and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
    ]
    allowed = set(base_layer_keys()) | set(extra_keys)
    allowed |= {param.name for param in params}
    for param in params:
        if param.default is param.empty and param.name not in config:
            raise ValueError(
                f"Missing field `{param.name}` in the config of "
                f"`{cls.__name__}`. Received: config keys="
                f"{short_repr(sorted(map(str, config)))}"
            )
    for key, value in config.items():
        if not isinstance(key, str) or key not in allowed:
            shown = key[:60] if isinstance(key, str) else short_repr(key, 60)
            raise ValueError(
                f"Unknown field `{shown}` in the config of `{cls.__name__}`; "
                "expected only the constructor's arguments. Received: "
                f"{shown}={short_repr(value)}"
            )
    config = dict(config)
    if "autocast" in config:
        check_bool("autocast", config["autocast"])
    if config.get("activity_regularizer") is not None:
        get_keras_object(
            "regularizers",
            "activity_regularizer",
            config["activity_regularizer"],
        )
    if config.get("dtype") is not None:
        config["dtype"] = _config_dtype(config["dtype"])
    return config


def _config_dtype(dtype):
    """A config's `dtype`, checked: a policy name stays as it is; a policy
    config is deserialized (a plain policy back to its name, as Keras
    does)."""
    try:
        if not isinstance(dtype, dict):
            keras.dtype_policies.get(dtype)
            return dtype
        policy = keras.dtype_policies.deserialize(dtype)
        if not isinstance(
            policy,
            (
                keras.dtype_policies.DTypePolicy,
                keras.dtype_policies.DTypePolicyMap,
            ),
        ):
            raise ValueError(f"not a dtype policy: {short_repr(policy)}")
    except (ValueError, TypeError) as error:
        raise ValueError(
            "Received an invalid value for argument `dtype`, expected a "
            "dtype policy name or config. Received: "
            f"dtype={short_repr(dtype)} ({error})"
        ) from error
    if (
        not isinstance(policy, keras.dtype_policies.DTypePolicyMap)
        and policy.quantization_mode is None
    ):
        return policy.name
    return policy


def concrete_values(x):
    """The values of `x` as a NumPy array when they are known now, else None.

    Known: NumPy arrays, Python numbers and lists, eager TensorFlow tensors,
    JAX arrays outside a trace and eager torch tensors. Unknown: symbolic
    tensors in a `tf.function`, JAX tracers, tensors traced by
    `torch.compile` (reading them would break its graph) and
    `keras.KerasTensor`s.
    """
    if isinstance(x, (int, float, list, tuple)):
        return np.asarray(x)
    backend = keras.backend.backend()
    if backend == "torch":
        # A leaf module, imported here: `ops` imports this one.
        from keras_attention.ops import _backend

        if _backend.torch_compiling():
            return None  # NumPy inputs are traced as tensors too
    if isinstance(x, (np.ndarray, np.generic, numbers.Number)):
        return np.asarray(x)
    if isinstance(x, keras.KerasTensor):
        return None
    if backend == "tensorflow" and not hasattr(x, "numpy"):
        return None  # a symbolic tensor in a `tf.function`
    try:
        return keras.ops.convert_to_numpy(x)
    except Exception:  # a symbolic tensor or tracer: checked at run time
        return None


def dtype_name(x):
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    try:
        return keras.backend.standardize_dtype(dtype)
    except ValueError:  # e.g. strings or objects: not a mask dtype
        return str(dtype)


def _known_numbers(name, x, expected):
    """`(dtype, values)` of `x`, which must have a numeric dtype (`expected`
    says what `x` must be, for the message); `values` is a NumPy array when
    they are known now, else None (see `concrete_values`)."""
    dtype = dtype_name(x)
    if not dtype.startswith(("int", "uint", "float", "bfloat")):
        raise ValueError(
            f"Argument `{name}` must {expected}. Received: {name}.dtype={dtype}"
        )
    return dtype, concrete_values(x)


def check_mask_values(name, mask):
    """Boolean masks pass; numeric masks must hold only 0 and 1.

    A float or integer mask is accepted when every entry is 0 (masked) or 1
    (kept), the usual `1.0 - padding` masks. Any other value (0.5, 2, -1,
    NaN) is refused with a `ValueError`: it is almost always a mistake, e.g.
    token ids or probabilities passed as a mask, which a plain cast would
    silently turn into True. Values are checked when they are known (NumPy
    arrays and eager tensors); inside a traced function (`tf.function`,
    `jax.jit`, a SavedModel) they are not, and any non-zero entry counts as
    True.
    """
    if mask is None or dtype_name(mask) == "bool":
        return
    dtype, values = _known_numbers(
        name, mask, "be a boolean mask (or numbers 0 and 1)"
    )
    if values is None:
        return
    values = np.asarray(values)
    bad = ~((values == 0) | (values == 1))
    if bad.any():
        examples = np.array2string(np.unique(values[bad])[:5], separator=", ")
        raise ValueError(
            f"Argument `{name}` must be boolean, or numeric with only the "
            f"values 0 (masked) and 1 (kept). Received: {name} of dtype "
            f"{dtype} with {int(bad.sum())} other values, e.g. {examples}"
        )


def check_lengths(name, lengths):
    """Sequence lengths must be non-negative whole numbers (when known)."""
    if lengths is None:
        return
    _, values = _known_numbers(name, lengths, "hold integer lengths")
    if values is None:
        return
    values = np.asarray(values).astype("float64")
    bad = ~(np.isfinite(values) & (values >= 0) & (values == np.round(values)))
    if bad.any():
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected "
            f"non-negative integers. Received: {name}="
            f"{np.array2string(values, separator=', ', threshold=20)} "
            f"(invalid: {np.unique(values[bad])[:5].tolist()})"
        )


def check_mask(name, mask, target_shape, target_desc):
    """Validates an optional mask's static shape against `target_shape`."""
    if mask is None:
        return
    check_broadcastable(name, static_shape(mask), target_shape, target_desc)


def check_last_dim(name, shape, expected, built_with):
    """Raises when a built layer is called with a different feature size."""
    got = shape[-1]
    if got is not None and expected is not None and got != expected:
        raise ValueError(
            f"The last dimension of `{name}` must be {expected}, the size "
            f"the layer was built with ({built_with}). Received: "
            f"{name}.shape={tuple(shape)}"
        )


def check_positive_number(name, value, allow_none=False):
    """Raises unless `value` is a finite real number greater than zero (or
    `None`, with `allow_none`)."""
    if allow_none and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or float(value) <= 0.0
    ):
        expected = "a positive number" + (" or `None`" if allow_none else "")
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected "
            f"{expected}. Received: {name}={short_repr(value)}"
        )


def check_fraction(name, value, include_zero=False):
    """Raises unless `value` is a real number in (0, 1] (`[0, 1]` with
    `include_zero`)."""
    low_ok = (lambda v: v >= 0.0) if include_zero else (lambda v: v > 0.0)
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or not low_ok(float(value))
        or float(value) > 1.0
    ):
        interval = "[0, 1]" if include_zero else "(0, 1]"
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a "
            f"float in the range {interval}. Received: "
            f"{name}={short_repr(value)}"
        )


def check_start_index(start_index, length=None, sequence_length=None):
    """Static checks of a position layer's `start_index` (an int or tensor).

    With `length` and `sequence_length` known, also checks that positions
    `start_index .. start_index + length - 1` exist.
    """
    if isinstance(start_index, bool):
        raise ValueError(
            "Received an invalid value for argument `start_index`, expected "
            f"a non-negative integer. Received: start_index={start_index!r}"
        )
    if isinstance(start_index, numbers.Integral):
        if start_index < 0:
            raise ValueError(
                "Received an invalid value for argument `start_index`, "
                "expected a non-negative integer. Received: "
                f"start_index={start_index}"
            )
        if sequence_length is not None and length is not None:
            if start_index + length > sequence_length:
                raise ValueError(
                    "The positions `start_index + sequence length` must not "
                    "exceed `sequence_length`, the number of positions the "
                    f"layer has. Received: start_index={start_index}, "
                    f"inputs sequence length={length}, "
                    f"sequence_length={sequence_length}"
                )
        return
    if len(static_shape(start_index)) != 0:
        raise ValueError(
            "Argument `start_index` must be a scalar (a Python int or a "
            "0-d integer tensor). Received: "
            f"start_index.shape={static_shape(start_index)}"
        )


def check_index(name, value, upper=None, upper_desc=""):
    """A non-negative position: a Python int or a 0-d integer tensor.

    Returns the value as a Python int when it is known now (an int, a NumPy
    scalar, an eager tensor), else None. With `upper`, a known value must
    not exceed it (`upper_desc` says what `upper` is).
    """
    if isinstance(value, bool):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a "
            f"non-negative integer. Received: {name}={value!r}"
        )
    if isinstance(value, int):
        # No NumPy: under `torch.compile` a NumPy scalar breaks the graph.
        known = value
    else:
        shape = static_shape(value)
        if len(shape) != 0:
            raise ValueError(
                f"Argument `{name}` must be a scalar (a Python int or a 0-d "
                f"integer tensor). Received: {name}.shape={shape}"
            )
        known = concrete_values(value)
        if known is None:
            return None
        if not np.issubdtype(known.dtype, np.integer):
            raise ValueError(
                f"Received an invalid value for argument `{name}`, expected "
                f"a non-negative integer. Received: {name}="
                f"{short_repr(value)}"
            )
        known = int(known)
    if known < 0:
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a "
            f"non-negative integer. Received: {name}={known}"
        )
    if upper is not None and known > upper:
        raise ValueError(
            f"Argument `{name}` is past the end: at most {upper} "
            f"({upper_desc}). Received: {name}={known}"
        )
    return known


def check_key_value_heads(num_heads, num_key_value_heads):
    """`num_key_value_heads`: None or a positive divisor of `num_heads`."""
    check_positive_int(
        "num_key_value_heads", num_key_value_heads, allow_none=True
    )
    if num_key_value_heads is not None and num_heads % num_key_value_heads:
        raise ValueError(
            "Received an invalid value for argument `num_key_value_heads`,"
            " expected a divisor of `num_heads`. Received: "
            f"num_heads={num_heads}, "
            f"num_key_value_heads={num_key_value_heads}"
        )


def check_rope(max_wavelength, scaling_factor, head_dim=None):
    """The layers' RoPE options; `head_dim`, when known, must be even."""
    check_positive_number(
        "rope_max_wavelength", max_wavelength, allow_none=True
    )
    check_positive_number("rope_scaling_factor", scaling_factor)
    if max_wavelength is not None and head_dim is not None and head_dim % 2:
        raise ValueError(
            "Rotary position embeddings rotate pairs of features, so the "
            "head dimension must be even when `rope_max_wavelength` is set. "
            f"Received: key_dim={head_dim}, "
            f"rope_max_wavelength={max_wavelength}"
        )


# TF Serving reads a version directory's name as a signed 64-bit integer
# (`ParseVersionNumber` in tensorflow_serving/sources/storage_path/
# file_system_storage_path_source.cc); we accept its non-negative range.
MAX_VERSION = 2**63 - 1


def check_version(version):
    """A TF Serving model version: an integer in `[0, 2**63 - 1]`."""
    if (
        isinstance(version, bool)
        or not isinstance(version, numbers.Integral)
        or not 0 <= version <= MAX_VERSION
    ):
        raise ValueError(
            "Argument `version` must be an integer from 0 to 2**63 - 1, as "
            "TF Serving reads version directories. Received: "
            f"version={short_repr(version)}"
        )
    return int(version)


def check_segment_ids(query_ids, key_ids, shapes, axes, note=""):
    """Segment ids: both or neither, integers, of shapes `shapes` (`(batch,
    q_len)` and `(batch, k_len)`, None dims unchecked), named `axes` in the
    message (e.g. `("q_len", "k_len")`), with `note` after the expected
    shape."""
    if query_ids is None and key_ids is None:
        return
    if query_ids is None or key_ids is None:
        raise ValueError(
            "Arguments `query_segment_ids` and `key_segment_ids` go "
            "together: pass both or neither. Received: query_segment_ids="
            f"{short_repr(query_ids)}, key_segment_ids={short_repr(key_ids)}"
        )
    for name, ids, expected, axis in zip(
        ("query_segment_ids", "key_segment_ids"),
        (query_ids, key_ids),
        shapes,
        axes,
    ):
        dtype = dtype_name(ids)
        if not dtype.startswith(("int", "uint")):
            raise ValueError(
                f"Argument `{name}` must hold integer ids. Received: "
                f"{name}.dtype={dtype}"
            )
        shape = static_shape(ids)
        if len(shape) != 2 or any(
            a is not None and b is not None and a != b
            for a, b in zip(shape, expected)
        ):
            raise ValueError(
                f"Argument `{name}` must have shape (batch, {axis}) = "
                f"{tuple(expected)}{note}. Received: {name}.shape={shape}"
            )
