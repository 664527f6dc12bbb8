"""Untrusted artifacts: configs and `.keras` files from someone else.

- `from_config` of every layer validates every field (type and range)
  before building: each field of a real config is replaced by hostile
  values, and the result is either a valid layer that builds small, or a
  `ValueError` that names the field.
- Loading a `.keras` file honours Keras' `safe_mode`: a Lambda layer, or a
  lambda smuggled into one of our layers' initializers, is refused; no code
  of ours unpickles, unmarshals or evaluates anything (checked statically on
  the source and dynamically while loading).
- A tampered config (wrong types, huge dims, unknown keys) or a truncated or
  corrupted file gives a clear error, does not crash the interpreter, and
  writes nothing.

The serving `check` command's refusal to run Python from a SavedModel is
tested in `tests/serving/test_check.py`
(`test_check_never_runs_python_from_the_export`,
`test_keras_cannot_be_imported_in_the_checker`).
"""

import ast
import builtins
import inspect
import json
import marshal
import pathlib
import pickle
import tempfile
import zipfile

import keras
import numpy as np
import pytest

import keras_attention as ka
from keras_attention import _validation
from keras_attention.compat import tfa

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_attention"


# Layer class, constructor arguments, build shapes.
LAYERS = {
    "MultiHeadAttention": (
        ka.MultiHeadAttention,
        dict(
            num_heads=2,
            key_dim=4,
            num_key_value_heads=1,
            dropout=0.1,
            use_gate=True,
            logits_soft_cap=30.0,
        ),
        [(2, 3, 6), (2, 5, 6)],
    ),
    "GroupedQueryAttention": (
        ka.GroupedQueryAttention,
        dict(
            head_dim=4,
            num_query_heads=4,
            num_key_value_heads=2,
            use_gate=True,
            logits_soft_cap=10.0,
        ),
        [(2, 3, 6), (2, 5, 6)],
    ),
    "AdditiveAttention": (
        ka.AdditiveAttention,
        dict(units=4, normalize=True),
        [(2, 3, 6), (2, 5, 7)],
    ),
    "AttentionPooling": (
        ka.AttentionPooling,
        dict(units=4, num_heads=2),
        [(2, 5, 6)],
    ),
    "PatchEmbedding": (
        ka.PatchEmbedding,
        dict(patch_size=2, hidden_dim=4),
        [(2, 4, 4, 3)],
    ),
    "PositionEmbedding": (
        ka.PositionEmbedding,
        dict(sequence_length=8),
        [(2, 5, 6)],
    ),
    "RotaryEmbedding": (
        ka.RotaryEmbedding,
        dict(max_wavelength=100, scaling_factor=2.0),
        [(2, 5, 6)],
    ),
    "SinusoidalPositionEncoding": (
        ka.SinusoidalPositionEncoding,
        dict(max_wavelength=100),
        [(2, 5, 6)],
    ),
    "TransformerEncoder": (
        ka.TransformerEncoder,
        dict(intermediate_dim=8, num_heads=2, dropout=0.1),
        [(2, 5, 6)],
    ),
    "TransformerDecoder": (
        ka.TransformerDecoder,
        dict(
            intermediate_dim=8,
            num_heads=2,
            dropout=0.1,
            num_key_value_heads=1,
            rope_max_wavelength=100.0,
            sliding_window=4,
            seed=3,
        ),
        [(2, 5, 8), (2, 4, 6)],
    ),
    "tfa.MultiHeadAttention": (
        tfa.MultiHeadAttention,
        dict(head_size=4, num_heads=2),
        [[(2, 3, 6), (2, 5, 6)]],
    ),
    "tfa.BahdanauAttention": (
        tfa.BahdanauAttention,
        dict(units=4, normalize=True),
        [(2, 6), (2, 5, 4)],
    ),
}

LAMBDA = {
    "class_name": "__lambda__",
    "config": {
        "code": "4wAAAAAAAAAAAAAAAAEAAAACAAAA",
        "defaults": None,
        "closure": None,
    },
}
HOSTILE = [
    "x",
    -1,
    0,
    1.5,
    float("nan"),
    10**12,
    2**70,
    [1],
    {"a": 1},
    LAMBDA,
    {"module": "os", "class_name": "system", "config": {"command": "x"}},
    True,
]


def _no_big_weights(monkeypatch):
    real = keras.layers.Layer.add_weight

    def add_weight(self, shape=None, *args, **kwargs):
        size = int(np.prod(shape or ()))
        assert size <= _validation.MAX_WEIGHT_ELEMENTS, (shape, size)
        return real(self, shape, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "add_weight", add_weight)


def _try_config(cls, config, shapes):
    """None if the layer builds from `config`, else the ValueError."""
    try:
        layer = cls.from_config(config)
        # Accepted: the value is valid for this field (e.g. a name). The
        # layer builds, small, or refuses the shapes (e.g. attention axes
        # that the inputs' rank does not have).
        layer.build(*shapes)
    except ValueError as error:
        return error
    assert sum(int(np.prod(w.shape)) for w in layer.weights) < 10**4
    return None


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_from_config_validates_every_field(name, monkeypatch):
    """Every field of a real config, replaced by each hostile value (as
    read from JSON): a layer that builds small, or a ValueError naming the
    field. Any other exception fails the test."""
    cls, init, shapes = LAYERS[name]
    original = cls(**init).get_config()
    _no_big_weights(monkeypatch)
    refused = accepted = 0
    for field in original:
        for value in HOSTILE:
            config = json.loads(json.dumps(dict(original, **{field: value})))
            error = _try_config(cls, config, shapes)
            if error is None:
                accepted += 1
                print(f"  accepted {field}={value!r}")
                continue
            message = str(error)
            assert f"`{field}`" in message or f"{field}=" in message, (
                field,
                value,
                message,
            )
            assert "Received" in message, (field, value, message)
            refused += 1
    print(f"{name}: {refused} hostile configs refused, {accepted} valid")
    assert refused > 5 * len(original)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_unknown_and_missing_fields(name):
    cls, init, _ = LAYERS[name]
    config = cls(**init).get_config()
    with pytest.raises(ValueError, match="Unknown field `__reduce__`"):
        cls.from_config(dict(config, __reduce__="os.system"))
    with pytest.raises(ValueError, match="must be a dict"):
        cls.from_config(json.dumps(config))
    required = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.default is p.empty and p.name not in ("self", "kwargs")
    ]
    for field in required:
        with pytest.raises(ValueError, match=f"Missing field `{field}`"):
            cls.from_config({k: v for k, v in config.items() if k != field})


def test_every_valid_config_round_trips():
    for cls, init, _ in LAYERS.values():
        config = json.loads(json.dumps(cls(**init).get_config()))
        assert cls.from_config(config).get_config() == config


# -- .keras files ------------------------------------------------------------


def _model():
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = ka.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(x, x)
    x = ka.AdditiveAttention(units=4, name="additive")(x, x)
    pooled = ka.AttentionPooling(units=4, name="pooling")(x)
    return keras.Model(tokens, keras.layers.Dense(3, name="head")(pooled))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model.keras"
    _model().save(path)
    with zipfile.ZipFile(path) as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    return path, entries


def _write(path, entries, config=None):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            if name == "config.json" and config is not None:
                data = json.dumps(config).encode()
            archive.writestr(name, data)
    return path


def _layer_config(config, name):
    for layer in config["config"]["layers"]:
        if layer["config"].get("name") == name:
            return layer
    raise KeyError(name)


def _tree(*roots):
    return {
        (str(root), str(p.relative_to(root)), p.stat().st_size)
        for root in roots
        for p in pathlib.Path(root).rglob("*")
    }


@pytest.fixture
def watched_dirs(tmp_path, monkeypatch):
    """A fresh temporary directory for Python and Keras; the test asserts
    that a failed load writes nothing there nor beside the file."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_saved_model_loads_in_safe_mode(saved, tmp_path):
    path, _ = saved
    model = keras.saving.load_model(path, safe_mode=True)
    names = [layer.name for layer in model.layers]
    assert {"mha", "additive", "pooling"} <= set(names)


def test_lambda_layer_is_refused_in_safe_mode(tmp_path):
    inputs = keras.Input((None, 8))
    x = ka.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0)(x)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, x).save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        keras.saving.load_model(path, safe_mode=True)


def test_lambda_in_our_layer_config_is_refused(saved, watched_dirs):
    path, entries = saved
    config = json.loads(entries["config.json"])
    _layer_config(config, "mha")["config"]["kernel_initializer"] = LAMBDA
    tampered = _write(watched_dirs / "t.keras", entries, config)
    before = _tree(watched_dirs)
    with pytest.raises(ValueError, match="kernel_initializer"):
        keras.saving.load_model(tampered, safe_mode=True)
    assert _tree(watched_dirs) == before


def _tamper_type(config):
    _layer_config(config, "mha")["config"]["num_heads"] = "2"


def _tamper_huge(config):
    _layer_config(config, "additive")["config"]["units"] = 10**9


def _tamper_huge_product(config):
    _layer_config(config, "mha")["config"]["key_dim"] = 2**40


def _tamper_unknown_key(config):
    _layer_config(config, "pooling")["config"]["on_load"] = "rm -rf /"


def _tamper_dtype(config):
    _layer_config(config, "pooling")["config"]["dtype"] = "float99"


def _tamper_initializer(config):
    _layer_config(config, "mha")["config"]["kernel_initializer"] = {
        "module": "os",
        "class_name": "system",
        "config": {"command": "touch pwned"},
    }


def _tamper_class(config):
    # Our registered name on a class that does not exist.
    _layer_config(config, "pooling")["registered_name"] = (
        "keras_attention>Pwned"
    )
    _layer_config(config, "pooling")["class_name"] = "Pwned"


TAMPERED = {
    "wrong_type": (_tamper_type, "num_heads"),
    "huge_units": (_tamper_huge, "units"),
    "huge_product": (_tamper_huge_product, "key_dim"),
    "unknown_key": (_tamper_unknown_key, "on_load"),
    "bad_dtype": (_tamper_dtype, "dtype"),
    "module_initializer": (_tamper_initializer, "kernel_initializer"),
    "unknown_class": (_tamper_class, "Pwned"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_config_gives_a_clear_error(saved, watched_dirs, case):
    path, entries = saved
    tamper, named = TAMPERED[case]
    config = json.loads(entries["config.json"])
    tamper(config)
    tampered = _write(watched_dirs / "tampered.keras", entries, config)
    before = _tree(watched_dirs)
    with pytest.raises((ValueError, TypeError)) as info:
        keras.saving.load_model(tampered, safe_mode=True)
    assert named in str(info.value)
    assert _tree(watched_dirs) == before
    assert not (watched_dirs / "pwned").exists()


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_gives_a_clear_error(saved, watched_dirs, fraction):
    path, _ = saved
    data = path.read_bytes()
    truncated = watched_dirs / "truncated.keras"
    truncated.write_bytes(data[: int(len(data) * fraction)])
    before = _tree(watched_dirs)
    with pytest.raises(ValueError, match="truncated.keras"):
        keras.saving.load_model(truncated)
    assert _tree(watched_dirs) == before


@pytest.mark.parametrize("part", ["weights", "config", "missing_config"])
def test_corrupted_entry_gives_a_clear_error(saved, watched_dirs, part):
    """A valid zip whose entries are cut: Keras' own errors (h5py's OSError
    for the weights, a JSON or key error for the config), never a crash."""
    path, entries = saved
    entries = dict(entries)
    if part == "weights":
        name = next(n for n in entries if n.endswith(".h5"))
        entries[name] = entries[name][: len(entries[name]) // 3]
    elif part == "config":
        entries["config.json"] = entries["config.json"][:100]
    else:
        del entries["config.json"]
    corrupted = _write(watched_dirs / "corrupted.keras", entries)
    before = _tree(watched_dirs)
    with pytest.raises((ValueError, OSError, KeyError)) as info:
        keras.saving.load_model(corrupted)
    assert str(info.value)
    assert _tree(watched_dirs) == before


# -- No unpickling, unmarshalling or eval anywhere in our code ---------------

FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}
# `serving export --import MODULE` imports the modules its user names on
# the command line (never a name read from the file being exported).
IMPORT_MODULE_ALLOWED = {"keras_attention/serving/_export_cli.py"}
FORBIDDEN_MODULES = {"pickle", "marshal", "dill", "cloudpickle", "shelve"}


def _python_files():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_package_source_never_unpickles_or_evals():
    problems = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names]
                if isinstance(node, ast.ImportFrom) and node.module:
                    names.append(node.module)
                for name in names:
                    if name.split(".")[0] in FORBIDDEN_MODULES:
                        problems.append(f"{rel}:{node.lineno} imports {name}")
            if isinstance(node, ast.Call):
                func = node.func
                if (
                    isinstance(func, ast.Name) and func.id in FORBIDDEN_BUILTINS
                ) or (
                    isinstance(func, ast.Attribute)
                    and func.attr == "import_module"
                    and rel.as_posix() not in IMPORT_MODULE_ALLOWED
                ):
                    problems.append(f"{rel}:{node.lineno} {ast.dump(func)}")
                for keyword in node.keywords:
                    value = keyword.value
                    if (
                        keyword.arg in ("allow_pickle", "safe_mode")
                        and isinstance(value, ast.Constant)
                        and value.value is (keyword.arg == "allow_pickle")
                    ):
                        problems.append(
                            f"{rel}:{node.lineno} {keyword.arg}={value.value}"
                        )
            if isinstance(node, ast.Attribute) and node.attr in (
                "enable_unsafe_deserialization",
                "py_function",
                "numpy_function",
            ):
                problems.append(f"{rel}:{node.lineno} uses {node.attr}")
    assert not problems, problems
    assert len(_python_files()) > 10  # the scan saw the package


def test_loading_never_unpickles_or_evals(saved, monkeypatch):
    path, _ = saved
    keras.saving.load_model(path)  # imports everything once

    def forbidden(name):
        def call(*args, **kwargs):
            raise AssertionError(f"{name} called while loading")

        return call

    for module, names in (
        (builtins, ("eval", "exec", "compile")),
        (pickle, ("load", "loads", "Unpickler")),
        (marshal, ("load", "loads")),
    ):
        for name in names:
            monkeypatch.setattr(module, name, forbidden(name))
    model = keras.saving.load_model(path, safe_mode=True)
    monkeypatch.undo()
    tokens = np.array([[3, 4, 0]], "int32")
    assert model.predict(tokens, verbose=0).shape == (1, 3)
