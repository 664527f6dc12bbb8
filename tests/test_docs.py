"""Every code block of `README.md` and `docs/*.md` runs or is checked.

The blocks are found by parsing the Markdown, so a new block that no check
covers fails `test_code_block` with its file and line. A comment line right
before a fence marks the block:

- `<!-- test: tensorflow_only -->`: runs under the TensorFlow backend only;
- `<!-- external: needs docker -->`: needs what no test machine has; its
  commands are validated, not run.

Python blocks run in a fresh namespace in a temporary directory, or as
doctests when they start with `>>>`. Shell blocks run under bash with every
external command replaced by a recorder; each recorded command is then
checked: our scripts' flags against their own argparse parsers (and run
with `--dry-run` where the tool has one), pip's extras against `setup.cfg`,
pytest's flags against pytest's parser, docker's mounted config files with
TF Serving's protobuf messages, and environment variables for real values.
"""

import argparse
import configparser
import contextlib
import dataclasses
import doctest
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys

import keras
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import keras_attention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")
DOC_FILES = [README] + sorted(
    os.path.join(DOCS, name)
    for name in os.listdir(DOCS)
    if name.endswith(".md")
)
LINKED_FILES = DOC_FILES + [os.path.join(ROOT, "MIGRATING.md")]
README_MAX_LINES = 200
DISTRIBUTION = "keras-attention-layers"
BACKENDS = ("tensorflow", "jax", "torch")  # the backends this project supports

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*(external|test):\s*(.*?)\s*-->\s*$")


@dataclasses.dataclass
class Block:
    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    external: str = None  # why it cannot run here
    test_mark: str = None  # e.g. "tensorflow_only"

    @property
    def where(self):
        return f"{self.path}:{self.line}"


def _parse_blocks(path):
    """The fenced blocks of a Markdown file, and the lines of `>>>` prompts
    outside any fence (which no test would find)."""
    relpath = os.path.relpath(path, ROOT)
    with open(path) as f:
        lines = f.read().splitlines()
    blocks, stray_prompts = [], []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            if lines[i].lstrip().startswith(">>>"):
                stray_prompts.append(f"{relpath}:{i + 1}")
            i += 1
            continue
        indent, fence, lang = opening.groups()
        body = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][len(indent) :])
            j += 1
        assert j < len(lines), f"{relpath}:{i + 1}: unclosed code block"
        block = Block(relpath, i + 1, lang.lower(), "\n".join(body) + "\n")
        mark = _MARK.match(lines[i - 1]) if i > 0 else None
        if mark and mark.group(1) == "external":
            block.external = mark.group(2)
        elif mark:
            block.test_mark = mark.group(2)
        blocks.append(block)
        i = j + 1
    return blocks, stray_prompts


BLOCKS = [block for path in DOC_FILES for block in _parse_blocks(path)[0]]


def _block_param(block):
    marks = []
    if block.test_mark:
        marks.append(getattr(pytest.mark, block.test_mark))
    return pytest.param(block, id=block.where, marks=marks)


# The README: a newcomer's path.


def _readme():
    with open(README) as f:
        return f.read()


def test_readme_fits_its_line_budget():
    count = len(_readme().splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines"


def test_readme_names_every_public_layer():
    layers = [
        name
        for name in keras_attention.__all__
        if isinstance(getattr(keras_attention, name), type)
        and issubclass(getattr(keras_attention, name), keras.layers.Layer)
    ]
    assert "MultiHeadAttention" in layers and "GroupQueryAttention" in layers
    text = _readme()
    missing = [name for name in layers if f"`{name}`" not in text]
    assert not missing, f"README.md does not name {missing}"


def test_readme_names_every_public_module():
    modules = [
        f"keras_attention.{info.name}"
        for info in pkgutil.iter_modules(keras_attention.__path__)
        if not info.name.startswith("_") and info.name != "layers"
    ]  # the layers are named one by one
    compat = importlib.import_module("keras_attention.compat")
    modules += [f"keras_attention.compat.{name}" for name in compat.__all__]
    assert "keras_attention.serving" in modules
    text = _readme()
    missing = [name for name in modules if f"`{name}`" not in text]
    assert not missing, f"README.md does not name {missing}"


# Links and stray doctests.


def _slug(heading):
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path):
    with open(path) as f:
        text = f.read()
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return {_slug(h) for h in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


@pytest.mark.parametrize(
    "path", LINKED_FILES, ids=lambda p: os.path.relpath(p, ROOT)
)
def test_links_point_to_files_and_headings(path):
    with open(path) as f:
        text = f.read()
    text = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.M | re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        file_part, _, anchor = target.partition("#")
        linked = (
            os.path.normpath(os.path.join(os.path.dirname(path), file_part))
            if file_part
            else path
        )
        if not os.path.exists(linked):
            broken.append(f"{target} (no such file)")
        elif anchor and anchor not in _anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{os.path.relpath(path, ROOT)}: {broken}"


def test_no_doctest_outside_a_code_block():
    stray = [line for path in DOC_FILES for line in _parse_blocks(path)[1]]
    assert not stray, f"`>>>` outside a ```python block at {stray}"


def test_the_blocks_are_found():
    where = {block.where for block in BLOCKS}
    assert any(w.startswith("README.md:") for w in where)
    assert {block.lang for block in BLOCKS} >= {"python", "bash"}
    assert any(block.external for block in BLOCKS)


# Every block: run it, or check what it runs.


@pytest.mark.parametrize("block", [_block_param(b) for b in BLOCKS])
def test_code_block(block, tmp_path, monkeypatch, request, capsys):
    if block.lang == "python" and block.external:
        pytest.fail(
            f"{block.where}: a Python block must run here; shrink it (tiny "
            "sizes, one device) instead of marking it external"
        )
    elif block.lang == "python":
        monkeypatch.chdir(tmp_path)
        if block.text.lstrip().startswith(">>>"):
            _run_doctest(block)
        else:
            _run_python(block)
    elif block.lang in ("bash", "sh", "shell"):
        calls = _record_shell(block, tmp_path)
        assert len(calls) > 1, f"{block.where}: the block runs no command"
        for argv, env in calls:
            _check_command(block, argv, env, tmp_path, request, capsys)
    else:
        pytest.fail(
            f"{block.where}: no test runs or checks this ```{block.lang} "
            "block (tests/test_docs.py)"
        )


def _run_python(block):
    # Leading newlines: tracebacks give the Markdown file's line numbers.
    source = "\n" * block.line + block.text
    code = compile(source, os.path.join(ROOT, block.path), "exec")
    exec(code, {"__name__": "__docs__"})


def _run_doctest(block):
    test = doctest.DocTestParser().get_doctest(
        block.text, {}, block.where, os.path.join(ROOT, block.path), block.line
    )
    assert test.examples, block.where
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, block.where
    assert result.attempted > 0, block.where


# Shell blocks: bash runs the block with a recorder for every command that
# is not a builtin (PATH is empty), so variables, quoting, `&&` and `&`
# behave as they would, and nothing is installed, started or sent.

_END_OF_BLOCK = "__end_of_block__"
_RECORDER = r"""
_record() {  # one file per command: `&` runs some of them at once
    _calls=$((_calls + 1))
    { printf '%s\0' "$@"; printf '\1'; /usr/bin/env -0; } \
        > "$DOCS_CALLS/$BASHPID.$_calls"
}
command_not_found_handle() { _record "$@"; }
"""
_END = f"\n_record {_END_OF_BLOCK}\n"  # what the block leaves exported
_SHELL_ENV = {"PWD", "SHLVL", "_", "OLDPWD", "PATH", "DOCS_CALLS"}


def _record_shell(block, tmp_path):
    bash = shutil.which("bash")
    syntax = subprocess.run(
        [bash, "-n", "-c", block.text], capture_output=True, text=True
    )
    assert syntax.returncode == 0, f"{block.where}: {syntax.stderr}"
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    empty = tmp_path / "empty-path"
    empty.mkdir()
    subprocess.run(
        [bash, "--noprofile", "--norc", "-c", _RECORDER + block.text + _END],
        cwd=ROOT,
        env={"PATH": str(empty), "DOCS_CALLS": str(calls_dir)},
        capture_output=True,
        timeout=60,
    )
    calls = []
    for record in sorted(calls_dir.iterdir(), key=os.path.getmtime):
        argv, env = record.read_bytes().split(b"\1")
        argv = [a.decode() for a in argv.split(b"\0")[:-1]]
        env = dict(
            item.decode().split("=", 1) for item in env.split(b"\0") if item
        )
        calls.append(
            (argv, {k: v for k, v in env.items() if k not in _SHELL_ENV})
        )
    return calls


def _check_command(block, argv, env, tmp_path, request, capsys):
    where = f"{block.where}: `{' '.join(argv)}`"
    for name, value in env.items():
        _check_environment_variable(where, name, value)
    program, args = argv[0], argv[1:]
    if program == _END_OF_BLOCK:
        return
    if program == "python" and args[:2] == ["-m", "pip"]:
        _check_pip(where, args[2:])
    elif program == "pip":
        _check_pip(where, args)
    elif program == "python" and args[:2] == ["-m", "pytest"]:
        _check_pytest(where, args[2:], request)
    elif program == "python" and args[:1] == ["-m"]:
        _check_our_cli(where, args[1], args[2:], capsys)
    elif program == "python" and args and args[0].endswith(".py"):
        _check_our_cli(where, args[0], args[1:], capsys)
    elif program == "ruff":
        _check_ruff(where, args, tmp_path)
    elif program == "docker":
        assert block.external, f"{where}: docker runs only in external blocks"
        _check_docker(where, args)
    else:
        pytest.fail(f"{where}: no check for the command `{program}`")


def _check_environment_variable(where, name, value):
    if name == "KERAS_BACKEND":
        assert value in BACKENDS, f"{where}: KERAS_BACKEND={value}"
    elif name == "TF_CONFIG":
        _check_tf_config(where, value)
    else:
        pytest.fail(f"{where}: no check for the environment variable {name}")


def _check_tf_config(where, value):
    """The keys `tf.distribute.cluster_resolver.TFConfigClusterResolver`
    reads: `cluster` (job name -> "host:port" list) and `task`."""
    config = json.loads(value)
    assert {"cluster", "task"} <= set(config), f"{where}: TF_CONFIG={value}"
    cluster, task = config["cluster"], config["task"]
    assert set(task) == {"type", "index"}, where
    assert task["type"] in cluster, where
    assert 0 <= task["index"] < len(cluster[task["type"]]), where
    for addresses in cluster.values():
        for address in addresses:
            host, _, port = address.rpartition(":")
            assert host and port.isdigit(), f"{where}: {address}"


# pip: the extras exist, the packages are known.


def _setup_cfg_extras():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    return set(config["options.extras_require"])


_PIP_FLAGS = {"--no-deps", "-q", "--quiet", "-U", "--upgrade"}


def _check_pip(where, args):
    assert args and args[0] == "install", f"{where}: only `pip install`"
    args = args[1:]
    requirements = []
    while args:
        arg = args.pop(0)
        if arg in ("-e", "--editable"):
            requirements.append(args.pop(0))
        elif arg.startswith("-"):
            assert arg in _PIP_FLAGS, f"{where}: no check for pip's {arg}"
        else:
            requirements.append(arg)
    assert requirements, f"{where}: installs nothing"
    for requirement in requirements:
        local = re.fullmatch(r"\.(?:\[(.*)\])?", requirement)
        if local:  # this repository, with extras
            name, extras = DISTRIBUTION, (local.group(1) or "").split(",")
            extras = {e for e in extras if e}
        else:
            parsed = Requirement(requirement)
            name, extras = parsed.name, parsed.extras
        if canonicalize_name(name) == DISTRIBUTION:
            known = _setup_cfg_extras()
        else:
            try:
                metadata = importlib.metadata.metadata(name)
            except importlib.metadata.PackageNotFoundError:
                pytest.fail(f"{where}: {name} is not a known package")
            known = set(metadata.get_all("Provides-Extra") or [])
        assert extras <= known, f"{where}: {name} has no extra {extras - known}"


# pytest: its own parser, with this session's plugins.


def _check_pytest(where, args, request):
    try:
        # The session's parser (private): it knows every plugin's options.
        namespace = request.config._parser.parse(args)
    except pytest.UsageError as e:
        pytest.fail(f"{where}: {e}")
    for path in namespace.file_or_dir:
        assert os.path.exists(os.path.join(ROOT, path)), f"{where}: {path}"
    profile = getattr(namespace, "hypothesis_profile", None)
    if profile:
        from hypothesis import settings

        try:
            settings.get_profile(profile)
        except Exception as e:
            pytest.fail(f"{where}: {e}")


# Our own command-line tools: their parsers, and --dry-run.


class _Parsed(Exception):
    def __init__(self, namespace):
        super().__init__("parsed")
        self.namespace = namespace


@contextlib.contextmanager
def _restored_process_state():
    """Scripts set environment variables and `sys.argv` on import."""
    environ, argv, path = dict(os.environ), sys.argv, list(sys.path)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        sys.argv, sys.path[:] = argv, path


def _cli_module(target):
    """The module of `python -m <target>` or `python <target>.py`."""
    if target.endswith(".py"):
        path = os.path.join(ROOT, target)
        assert os.path.isfile(path), f"no script {target}"
        sys.path.insert(0, os.path.dirname(path))  # as python does
        return os.path.splitext(os.path.basename(path))[0]
    assert target.split(".")[0] in ("keras_attention", "benchmarks", "tests")
    spec = importlib.util.find_spec(target)
    assert spec is not None, f"no module {target}"
    return f"{target}.__main__" if spec.submodule_search_locations else target


def _parse(target, args):
    """The namespace that the tool's own parser makes of `args`: calls its
    `main(args)`, or imports it with `sys.argv` set when it parses at
    import, and stops at the first `parse_args`."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(parser, args=None, namespace=None):
        raise _Parsed(original(parser, args, namespace))

    with _restored_process_state(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
        name = _cli_module(target)
        with open(importlib.util.find_spec(name).origin) as f:
            has_main = re.search(r"^def main\(", f.read(), flags=re.M)
        try:
            if has_main:  # imported as the tests import it: sys.argv as is
                importlib.import_module(name).main(list(args))
            else:
                sys.argv = [target, *args]
                sys.modules.pop(name, None)
                importlib.import_module(name)
        except _Parsed as parsed:
            return parsed.namespace
        except SystemExit as e:
            pytest.fail(f"its parser rejects {args}: exit {e.code}")
    pytest.fail(f"{target} never parsed its arguments")


def _check_our_cli(where, target, args, capsys):
    capsys.readouterr()
    try:
        namespace = _parse(target, args)
    except pytest.fail.Exception as e:
        pytest.fail(f"{where}: {e}")
    for module in getattr(namespace, "imports", None) or []:
        assert importlib.util.find_spec(module), f"{where}: no {module}"
    if hasattr(namespace, "dry_run"):
        dry_run = list(args) + ([] if namespace.dry_run else ["--dry-run"])
        with _restored_process_state():
            main = importlib.import_module(_cli_module(target)).main
            assert main(dry_run) == 0, f"{where}: --dry-run failed"
        assert capsys.readouterr().out, f"{where}: --dry-run printed nothing"


# ruff: the same subcommands and flags, on a file of its own.


def _check_ruff(where, args, tmp_path):
    source = tmp_path / "ruff-check"
    source.mkdir(exist_ok=True)
    (source / "module.py").write_text('"""A module."""\n\nVALUE = 1\n')
    args = [str(source) if arg == "." else arg for arg in args]
    result = subprocess.run(
        [shutil.which("ruff"), *args], capture_output=True, text=True
    )
    assert result.returncode == 0, f"{where}: {result.stdout}{result.stderr}"


# docker (external): TF Serving's image, flags and mounted config files.

_DOCKER_OPTIONS = {"-p": True, "--mount": True, "--gpus": True, "--rm": False}
_SERVER_FLAGS = {
    "--model_config_file",
    "--batching_parameters_file",
    "--enable_batching",
    "--port",
    "--rest_api_port",
}


def _check_docker(where, args):
    assert args[0] == "run", f"{where}: only `docker run`"
    args, mounts = args[1:], {}
    while args[0].startswith("-"):
        option = args.pop(0)
        assert option in _DOCKER_OPTIONS, f"{where}: no check for {option}"
        value = args.pop(0) if _DOCKER_OPTIONS[option] else None
        if option == "--mount":
            fields = dict(field.split("=", 1) for field in value.split(","))
            assert os.path.isdir(fields["source"]), f"{where}: {value}"
            mounts[fields["target"]] = fields["source"]
    image, server_args = args[0], args[1:]
    repository, _, tag = image.partition(":")
    assert repository == "tensorflow/serving", f"{where}: {image}"
    flags = dict(arg.partition("=")[::2] for arg in server_args)
    assert set(flags) <= _SERVER_FLAGS, f"{where}: {set(flags)}"

    def local(path):
        for target, source in mounts.items():
            if path.startswith(target + "/"):
                return os.path.join(source, path[len(target) + 1 :])
        pytest.fail(f"{where}: {path} is not in a mounted directory")

    from google.protobuf import text_format

    if "--model_config_file" in flags:
        from tensorflow_serving.config import model_server_config_pb2

        with open(local(flags["--model_config_file"])) as f:
            config = text_format.Parse(
                f.read(), model_server_config_pb2.ModelServerConfig()
            )
        models = config.model_config_list.config
        assert models, where
        for model in models:
            _check_served_model(where, local(model.base_path), tag)
    if "--batching_parameters_file" in flags:
        from keras_attention.serving import _config

        assert "--enable_batching" in flags, where
        with open(local(flags["--batching_parameters_file"])) as f:
            text_format.Parse(f.read(), _config.batching_parameters_class()())


def _check_served_model(where, base_path, tag):
    """A version directory, exported by the TensorFlow that the image
    tag names."""
    versions = [v for v in os.listdir(base_path) if v.isdigit()]
    assert versions, f"{where}: no version under {base_path}"
    latest = os.path.join(base_path, max(versions, key=int))
    assert os.path.isfile(os.path.join(latest, "saved_model.pb")), latest
    with open(
        os.path.join(latest, "assets.extra", "keras_attention.json")
    ) as f:
        exported_by = json.load(f)["versions"]["tensorflow"]
    assert tag.split("-")[0] == exported_by, f"{where}: {tag}, {latest}"
