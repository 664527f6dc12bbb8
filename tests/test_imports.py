"""Imports point down: the import graph of `keras_attention`, read from the
source with `ast`, has no cycle; no library module imports the command line
(only `serving/__main__.py` imports `serving/_export_cli.py`); and no module
imports or uses another module's private name (`from x import _y`,
`x._y`). Importing a private module (`from keras_attention.layers import
_common`) is fine.

Module-level and function-level imports both count. `from pkg import name`
is an edge to the submodule `pkg.name` when that is a module, else to `pkg`.
"""

import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "keras_attention"
CLI_MODULES = (
    f"{PACKAGE}.serving._export_cli",
    f"{PACKAGE}.serving.__main__",
)
# The one module that may import the command line.
CLI_IMPORTER = f"{PACKAGE}.serving.__main__"

Edge = collections.namedtuple("Edge", "source target path line statement")


def _is_private(name):
    return name.startswith("_") and not (
        name.startswith("__") and name.endswith("__")
    )


def _modules(root, package):
    """`{module name: path}` of every `.py` file under `root/package`, and
    the names of the packages among them."""
    modules, packages = {}, set()
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
            packages.add(".".join(parts))
        modules[".".join(parts)] = path
    return modules, packages


def _absolute(module, is_package, node):
    """The absolute module name of an `ImportFrom`'s `from` part."""
    if not node.level:
        return node.module
    parts = module.split(".")
    if not is_package:
        parts.pop()
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


class _FileScan:
    """The imports of one module (edges to other package modules, with the
    names they bind) and its reaches for private names."""

    def __init__(self, root, module, path, modules, packages, package):
        self.module = module
        self.modules = modules
        self.package = package
        self.rel = path.relative_to(root).as_posix()
        self.is_package = module in packages
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.bindings = {}  # local name -> module it is bound to
        self.edges = []
        self.problems = []

    def _ours(self, name):
        return name == self.package or name.startswith(self.package + ".")

    def _edge(self, node, target):
        self.edges.append(
            Edge(self.module, target, self.rel, node.lineno, ast.unparse(node))
        )

    def _problem(self, node, what):
        statement = ast.unparse(node)
        self.problems.append(f"{self.rel}:{node.lineno}: {what}: {statement}")

    def _import(self, node):
        for alias in node.names:
            if not self._ours(alias.name):
                continue
            target = alias.name
            while target not in self.modules and "." in target:
                target = target.rsplit(".", 1)[0]
            self._edge(node, target)
            if alias.asname:
                self.bindings[alias.asname] = target
            else:
                self.bindings[alias.name.split(".")[0]] = self.package

    def _import_from(self, node):
        base = _absolute(self.module, self.is_package, node)
        if not base or not self._ours(base):
            return
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in self.modules:
                self._edge(node, submodule)
                self.bindings[alias.asname or alias.name] = submodule
                continue
            self._edge(node, base)
            if _is_private(alias.name):
                self._problem(
                    node, f"imports the private name {alias.name} of {base}"
                )

    def _resolve(self, expr):
        """The module an expression names (`_chunked`, `pkg.ops._chunked`),
        or None."""
        if isinstance(expr, ast.Name):
            return self.bindings.get(expr.id)
        if isinstance(expr, ast.Attribute):
            owner = self._resolve(expr.value)
            if owner and f"{owner}.{expr.attr}" in self.modules:
                return f"{owner}.{expr.attr}"
        return None

    def scan(self):
        nodes = list(ast.walk(self.tree))
        for node in nodes:
            if isinstance(node, ast.Import):
                self._import(node)
            elif isinstance(node, ast.ImportFrom):
                self._import_from(node)
        for node in nodes:
            if not isinstance(node, ast.Attribute) or not _is_private(
                node.attr
            ):
                continue
            owner = self._resolve(node.value)
            if (
                owner
                and owner != self.module
                and f"{owner}.{node.attr}" not in self.modules
            ):
                self._problem(
                    node, f"uses the private name {node.attr} of {owner}"
                )
        return self


def _cycles(edges):
    """One cycle (a list of edges) in each strongly connected component of
    the graph that has one, found with Tarjan's algorithm."""
    graph = collections.defaultdict(dict)
    for edge in edges:
        graph[edge.source].setdefault(edge.target, edge)
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(list(graph)):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:
        start = min(component)
        if len(component) == 1 and start not in graph[start]:
            continue
        # Breadth-first from `start` back to itself, inside the component.
        previous = {}
        queue = collections.deque([start])
        while queue:
            node = queue.popleft()
            if start in graph[node]:
                path = [graph[node][start]]
                while node != start:
                    edge = previous[node]
                    path.append(edge)
                    node = edge.source
                cycles.append(path[::-1])
                break
            for target, edge in sorted(graph[node].items()):
                if target in component and target not in previous:
                    previous[target] = edge
                    queue.append(target)
    return cycles


def import_problems(root=ROOT, package=PACKAGE):
    """Every broken rule under `root/package`, one line each, and the edges
    of the import graph."""
    modules, packages = _modules(root, package)
    edges, problems = [], []
    for module, path in modules.items():
        scan = _FileScan(root, module, path, modules, packages, package)
        scan.scan()
        edges += scan.edges
        problems += scan.problems
    cli_modules = {name.replace(PACKAGE, package, 1) for name in CLI_MODULES}
    cli_importer = CLI_IMPORTER.replace(PACKAGE, package, 1)
    for edge in edges:
        if edge.target in cli_modules and edge.source != cli_importer:
            problems.append(
                f"{edge.path}:{edge.line}: a library module imports the "
                f"command line {edge.target}: {edge.statement}"
            )
    for cycle in _cycles(edges):
        names = " -> ".join([e.source for e in cycle] + [cycle[0].source])
        where = "; ".join(f"{e.path}:{e.line}: {e.statement}" for e in cycle)
        problems.append(f"import cycle {names} ({where})")
    return sorted(problems), edges


def test_imports_point_down():
    problems, edges = import_problems()
    assert not problems, "\n".join(problems)
    # The scan saw the package: module-level and function-level imports.
    pairs = {(e.source, e.target) for e in edges}
    assert (
        "keras_attention.ops.attention",
        "keras_attention.ops._chunked",
    ) in pairs
    assert (
        "keras_attention.serving.__main__",
        "keras_attention.serving._export_cli",
    ) in pairs
    assert (
        "keras_attention.serving._export_cli",
        "keras_attention.serving._export",
    ) in pairs  # inside `export_file`


def _tree(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_detector_reports_each_kind_of_problem(tmp_path):
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": (
                "from pkg import b\n"
                "def f():\n"
                "    from pkg.b import _helper, shown\n"
            ),
            "pkg/b.py": (
                "def g():\n"
                "    from pkg import a\n"
                "    return a._thing + a.__name__.count('.')\n"
            ),
            "pkg/c.py": (
                "from pkg.sub import _private\n"
                "from . import sub\n"
                "import pkg.sub as s\n"
                "x = _private.value + sub._private.value\n"
                "y = s._hidden\n"
            ),
            "pkg/sub/__init__.py": "",
            "pkg/sub/_private.py": "value = 1\n",
            "pkg/serving/__init__.py": "",
            "pkg/serving/_export_cli.py": "",
            "pkg/serving/__main__.py": "from pkg.serving import _export_cli\n",
            "pkg/serving/lib.py": (
                "def h():\n    from pkg.serving import _export_cli\n"
            ),
        },
    )
    problems, _ = import_problems(tmp_path, "pkg")
    assert problems == [
        "import cycle pkg.a -> pkg.b -> pkg.a (pkg/a.py:1: from pkg import "
        "b; pkg/b.py:2: from pkg import a)",
        "pkg/a.py:3: imports the private name _helper of pkg.b: from pkg.b "
        "import _helper, shown",
        "pkg/b.py:3: uses the private name _thing of pkg.a: a._thing",
        "pkg/c.py:5: uses the private name _hidden of pkg.sub: s._hidden",
        "pkg/serving/lib.py:2: a library module imports the command line "
        "pkg.serving._export_cli: from pkg.serving import _export_cli",
    ]
