"""The house keeps its shape (docs/architecture.md): each module imports only its own layer or those below,
the import graph has no cycle, and no module reaches into another's private names."""

from __future__ import annotations

import ast

from .support.config import ROOT

PACKAGE = ROOT / "lightning_gpt"
LAYERS = [  # bottom to top; a module may import from its own layer and the layers below
    ["errors", "io", "devices", "library_internals"],
    ["tokenizers", "models", "data"],
    ["generation", "inspection", "hf", "checkpoints", "evaluation", "explainer", "schema", "optim", "parallel"],
    ["", "training", "runs"],  # "": lightning_gpt/__init__.py, the Python API
    ["apps", "__main__"],
]


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return next(i for i, names in enumerate(LAYERS) if part in names)


def imports() -> list[tuple[str, str, list[str]]]:
    """(importing module, imported module, names) for every import of a lightning_gpt module, lazy ones too."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((module, node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                found += [(module, a.name, []) for a in node.names]
    return found


def test_every_module_has_a_layer():
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in PACKAGE.rglob("*.py")
    }
    for module in modules:
        layer(module)  # StopIteration: a new top-level module needs its place in LAYERS and in docs/architecture.md


def test_imports_go_down_the_layers_only():
    upward = [
        (a, b) for a, b, _ in imports() if b.startswith("lightning_gpt.") or b == "lightning_gpt" if layer(b) > layer(a)
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for a, b, names in imports():
        if b == "lightning_gpt" or b.startswith("lightning_gpt."):
            targets = {b, *(f"{b}.{n}" for n in names)}  # `from lightning_gpt.apps import train` imports a module
            graph.setdefault(a, set()).update(
                t
                for t in targets
                if (ROOT / (t.replace(".", "/") + ".py")).exists()
                or (ROOT / t.replace(".", "/") / "__init__.py").exists()
            )
    done, on_path = set(), []

    def visit(node: str) -> None:
        if node in on_path:
            raise AssertionError(" -> ".join([*on_path[on_path.index(node) :], node]))
        if node in done:
            return
        on_path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt != node and not node.startswith(nxt + "."):  # a package's own __init__ is no cycle
                visit(nxt)
        on_path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


def test_no_module_imports_another_modules_private_names():
    private = [
        (a, b, n)
        for a, b, names in imports()
        for n in names
        if n.startswith("_") and not n.startswith("__") and a != "lightning_gpt.library_internals"
    ]
    assert private == []  # a library's private API goes through lightning_gpt/library_internals.py, alone


def test_docs_architecture_lists_the_layers():
    """docs/architecture.md's layer table names the same modules, in the same order, as LAYERS."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| \d\. [^|]+ \| ([^|]+) \|", text, re.M)
    listed = [[m.strip().split(" ")[0].strip("`/") for m in row.split(",")] for row in rows]
    assert listed == [[name if name else '""' for name in layer] for layer in LAYERS]
