"""The house's size and prose budgets, read from the source with `ast`.

- `MultiHeadAttention.call` at most 80 lines and its file at most 950: new
  behaviour goes to the layer's private rooms (`_kv_cache`,
  `_kernel_layout`, `_programmable`).
- An example's header (its module docstring) at most 40 lines.
- No issue numbers in the package, the examples or the benchmarks: run
  history goes to `benchmarks/README.md`, `examples/RESULTS.md` and the
  CHANGELOG.

The README's budget is `tests/test_docs.py`'s.
"""

import ast
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MHA = os.path.join(ROOT, "keras_attention", "layers", "multi_head_attention.py")
CALL_MAX_LINES = 80
MHA_MAX_LINES = 950
HEADER_MAX_LINES = 40
ISSUE_NUMBER = re.compile(r"\b(issue|task)s? ?#?\d+", re.IGNORECASE)


def _source(path):
    with open(path) as f:
        return f.read()


def _method(tree, class_name, name):
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    raise AssertionError(f"{class_name}.{name} not found")


def test_multi_head_attention_within_its_budgets():
    source = _source(MHA)
    call = _method(ast.parse(source), "MultiHeadAttention", "call")
    call_lines = call.end_lineno - call.lineno + 1
    assert call_lines <= CALL_MAX_LINES, f"call has {call_lines} lines"
    file_lines = len(source.splitlines())
    assert file_lines <= MHA_MAX_LINES, f"the file has {file_lines} lines"


EXAMPLES = sorted(
    p
    for p in glob.glob(os.path.join(ROOT, "examples", "*.py"))
    if not os.path.basename(p).startswith("_")
)


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_header_within_budget(path):
    header = ast.get_docstring(ast.parse(_source(path)), clean=False)
    assert header, f"{path} has no header"
    lines = len(header.splitlines())
    assert lines <= HEADER_MAX_LINES, f"header of {lines} lines"


def _code_files():
    for folder in ("keras_attention", "examples", "benchmarks"):
        yield from glob.glob(
            os.path.join(ROOT, folder, "**", "*.py"), recursive=True
        )


def test_no_issue_numbers_in_code():
    found = [
        f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}"
        for path in _code_files()
        for number, line in enumerate(_source(path).splitlines(), 1)
        if ISSUE_NUMBER.search(line)
    ]
    assert not found, "\n".join(found)
