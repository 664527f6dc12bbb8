"""TF Serving's text-proto configuration files.

`write_model_config` writes the file given to `--model_config_file` (a
`tensorflow.serving.ModelServerConfig`), `write_batching_config` the one
given to `--batching_parameters_file` (a `tensorflow.serving.
BatchingParameters`). Both are written with protobuf's text format from the
messages themselves, so TF Serving parses what we write. The pip package
`tensorflow-serving-api` ships `ModelServerConfig` but not
`BatchingParameters`; that message is declared here with the field names
and numbers of TF Serving's `session_bundle_config.proto`.
"""

import numbers
import os

from keras_attention.serving import _export
from keras_attention.serving._wire import SERVING_API_HINT
from keras_attention.serving._wire import check_model_name


def write_model_config(
    base_dir,
    models,
    *,
    serving_root="/models",
    filename="models.config",
):
    """Writes a TF Serving model config file for the models in `base_dir`.

    Args:
        base_dir: The directory that holds one folder per model, each with
            version folders (`base_dir/<name>/<version>/saved_model.pb`), as
            `export_saved_model` writes them. The config is written here.
        models: The models to serve: a list of names, or a dict
            `{name: versions}` where `versions` is `"latest"` (serve the
            newest), `"all"`, or a list of integer versions to serve.
        serving_root: Where `base_dir` is mounted in the server, e.g. the
            `target` of `docker run --mount`. Defaults to `"/models"`.
        filename: Defaults to `"models.config"`.

    Returns:
        The path of the written file.

    Example:

    >>> import tempfile
    >>> from keras_attention import serving
    >>> inputs = keras.Input((3,), name="x")
    >>> model = keras.Model(inputs, keras.layers.Dense(1, name="y")(inputs))
    >>> root = tempfile.mkdtemp()
    >>> _ = serving.export_saved_model(model, os.path.join(root, "demo"))
    >>> path = serving.write_model_config(root, ["demo"])
    >>> print(open(path).read().strip())
    model_config_list {
      config {
        name: "demo"
        base_path: "/models/demo"
        model_platform: "tensorflow"
        model_version_policy {
          latest {
            num_versions: 1
          }
        }
      }
    }
    """
    from google.protobuf import text_format

    try:
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError as e:
        raise ImportError(SERVING_API_HINT) from e
    if isinstance(models, (list, tuple)):
        models = {name: "latest" for name in models}
    if not isinstance(models, dict) or not models:
        raise ValueError(
            "Argument `models` must be a non-empty list of model names or a "
            "dict {name: 'latest' | 'all' | [versions]}. "
            f"Received: models={models!r}"
        )
    if not isinstance(serving_root, str) or not serving_root:
        raise ValueError(
            "Argument `serving_root` must be a non-empty string. "
            f"Received: serving_root={serving_root!r}"
        )
    config = model_server_config_pb2.ModelServerConfig()
    for name, versions in models.items():
        check_model_name(name, "models")
        present = _export.existing_versions(os.path.join(base_dir, name))
        if not present:
            raise ValueError(
                f"Model {name!r} has no version folders under "
                f"{os.path.join(base_dir, name)}."
            )
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = f"{serving_root.rstrip('/')}/{name}"
        entry.model_platform = "tensorflow"
        policy = entry.model_version_policy
        if versions == "latest":
            policy.latest.num_versions = 1
        elif versions == "all":
            policy.all.SetInParent()
        elif isinstance(versions, (list, tuple)) and versions:
            missing = [v for v in versions if v not in present]
            if missing or not all(_is_version(v) for v in versions):
                raise ValueError(
                    f"Model {name!r}: versions must be existing integer "
                    f"versions {present}. Received: {list(versions)}"
                )
            policy.specific.versions.extend(int(v) for v in versions)
        else:
            raise ValueError(
                f"Model {name!r}: expected 'latest', 'all' or a list of "
                f"versions. Received: {versions!r}"
            )
    path = os.path.join(base_dir, filename)
    _write_text(path, text_format.MessageToString(config))
    return path


def _is_version(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def batching_parameters_class():
    """The `tensorflow.serving.BatchingParameters` message class."""
    from google.protobuf import descriptor_pb2
    from google.protobuf import descriptor_pool
    from google.protobuf import message_factory
    from google.protobuf import wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    proto = descriptor_pb2.FileDescriptorProto(
        name="keras_attention/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = proto.message_type.add(name="BatchingParameters")
    fields = descriptor_pb2.FieldDescriptorProto
    for number, (name, wrapper) in enumerate(
        [
            ("max_batch_size", "Int64Value"),
            ("batch_timeout_micros", "Int64Value"),
            ("max_enqueued_batches", "Int64Value"),
            ("num_batch_threads", "Int64Value"),
            ("thread_pool_name", "StringValue"),
        ],
        start=1,
    ):
        message.field.add(
            name=name,
            number=number,
            type=fields.TYPE_MESSAGE,
            type_name=f".google.protobuf.{wrapper}",
            label=fields.LABEL_OPTIONAL,
        )
    message.field.add(
        name="allowed_batch_sizes",
        number=6,
        type=fields.TYPE_INT64,
        label=fields.LABEL_REPEATED,
    )
    message.field.add(
        name="pad_variable_length_inputs",
        number=7,
        type=fields.TYPE_BOOL,
        label=fields.LABEL_OPTIONAL,
    )
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName(
        "tensorflow.serving.BatchingParameters"
    )
    return message_factory.GetMessageClass(descriptor)


def write_batching_config(
    path,
    max_batch_size=32,
    batch_timeout_micros=1000,
    max_enqueued_batches=100,
    num_batch_threads=None,
    allowed_batch_sizes=None,
    pad_variable_length_inputs=True,
):
    """Writes a TF Serving batching parameters file.

    Use it with `--enable_batching --batching_parameters_file=PATH`.

    Args:
        path: The file to write.
        max_batch_size: The largest batch the server forms. Defaults to 32.
        batch_timeout_micros: How long a request may wait for a batch to
            fill. Defaults to 1000.
        max_enqueued_batches: Queue length, in batches. Defaults to 100.
        num_batch_threads: Threads that run batches. Defaults to the number
            of CPUs of this machine.
        allowed_batch_sizes: Optional increasing list of batch sizes to pad
            to, ending with `max_batch_size`.
        pad_variable_length_inputs: Whether the server pads requests of
            different sequence lengths to a common length to batch them.
            Defaults to `True`, which attention models with dynamic lengths
            need. Padding uses zeros, so pad token id 0 must mean padding
            (as with `Embedding(mask_zero=True)`).

    Returns:
        `path`.

    Example:

    >>> import tempfile
    >>> from keras_attention import serving
    >>> path = os.path.join(tempfile.mkdtemp(), "batching.config")
    >>> _ = serving.write_batching_config(path, max_batch_size=8,
    ...     num_batch_threads=2, allowed_batch_sizes=[1, 4, 8])
    >>> print(open(path).read().strip())
    max_batch_size {
      value: 8
    }
    batch_timeout_micros {
      value: 1000
    }
    max_enqueued_batches {
      value: 100
    }
    num_batch_threads {
      value: 2
    }
    allowed_batch_sizes: 1
    allowed_batch_sizes: 4
    allowed_batch_sizes: 8
    pad_variable_length_inputs: true
    """
    from google.protobuf import text_format

    if num_batch_threads is None:
        num_batch_threads = os.cpu_count() or 1
    for name, value in [
        ("max_batch_size", max_batch_size),
        ("batch_timeout_micros", batch_timeout_micros),
        ("max_enqueued_batches", max_enqueued_batches),
        ("num_batch_threads", num_batch_threads),
    ]:
        minimum = 0 if name == "batch_timeout_micros" else 1
        if not _is_version(value) or value < minimum:
            raise ValueError(
                f"Argument `{name}` must be an integer >= {minimum}. "
                f"Received: {name}={value!r}"
            )
    if allowed_batch_sizes is not None:
        sizes = list(allowed_batch_sizes)
        if (
            not sizes
            or not all(_is_version(s) and s >= 1 for s in sizes)
            or any(a >= b for a, b in zip(sizes, sizes[1:]))
            or sizes[-1] != max_batch_size
        ):
            raise ValueError(
                "Argument `allowed_batch_sizes` must be increasing positive "
                f"integers ending with max_batch_size={max_batch_size}. "
                f"Received: allowed_batch_sizes={allowed_batch_sizes!r}"
            )
    if not isinstance(pad_variable_length_inputs, bool):
        raise ValueError(
            "Argument `pad_variable_length_inputs` must be a bool. Received: "
            f"pad_variable_length_inputs={pad_variable_length_inputs!r}"
        )
    message = batching_parameters_class()()
    message.max_batch_size.value = max_batch_size
    message.batch_timeout_micros.value = batch_timeout_micros
    message.max_enqueued_batches.value = max_enqueued_batches
    message.num_batch_threads.value = num_batch_threads
    if allowed_batch_sizes is not None:
        message.allowed_batch_sizes.extend(allowed_batch_sizes)
    message.pad_variable_length_inputs = pad_variable_length_inputs
    _write_text(path, text_format.MessageToString(message))
    return path


def _write_text(path, text):
    """Writes `path` atomically: a server never reads a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
