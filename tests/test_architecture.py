"""The layout's rules, checked on the source (README "Where things are"):

- packages are layered and a lower one never imports a higher one (kernels/ at the bottom imports
  nothing of ahn_jax, nor flax: tests/test_kernels/test_independence.py);
- no import cycles between modules;
- modules stay under ~350 lines and functions under ~60, so that each file holds one concern;
- library code takes arguments: only the entry points (`python -m ahn_jax.X`) read absl's FLAGS.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60

# Lowest first. A module may import its own package and any package of a lower rank.
LAYERS = (
    ("kernels",),
    (
        "ahn_jax.config",
        "ahn_jax.tokenizer",
        "ahn_jax.jsonl",
        "ahn_jax.setting_changes",
        "ahn_jax.xla_cpu",
        "ahn_jax.cli",
    ),
    ("ahn_jax.model",),
    ("ahn_jax.checkpoints", "ahn_jax.costs"),
    ("ahn_jax.training", "ahn_jax.inference"),
    ("ahn_jax.evaluation",),
    ("ahn_jax.demo",),
    # the entry points of `python -m ahn_jax.X` and the package's public surface
    ("ahn_jax.train", "ahn_jax.evaluate", "ahn_jax.generate", "ahn_jax.convert"),
    ("ahn_jax.compile_check", "ahn_jax"),
)


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("ahn_jax", "kernels"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _unit(module: str) -> str:
    """The layered unit a module belongs to: the longest entry of LAYERS that prefixes it."""
    units = [u for layer in LAYERS for u in layer if module == u or module.startswith(u + ".")]
    assert units, f"{module} is in no layer of LAYERS: add it"
    return max(units, key=len)


def _rank(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(module: str) -> set[str]:
    """Our modules that `module` imports (at any depth of its code, but not for type checking)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:  # `from pkg import module` imports the module, not pkg
                name = f"{base}.{alias.name}"
                found.add(name if name in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imports(module) for module in MODULES}

# The one upward import allowed: `AhnModel.save_ahn` writes the released AHN-only layout, a
# checkpoint format that lives with the others. It stays acyclic because ahn_weights (and what it
# imports) never imports ahn_jax.model: test_no_import_cycles checks that.
UPWARD_IMPORTS = {("ahn_jax.model.transformer", "ahn_jax.checkpoints.ahn_weights")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_lower_layers_never_import_higher_ones(module):
    unit = _unit(module)
    for imported in GRAPH[module]:
        if (module, imported) in UPWARD_IMPORTS:
            continue
        other = _unit(imported)
        assert other == unit or _rank(other) < _rank(unit), (
            f"{module} ({unit}, layer {_rank(unit)}) imports {imported} "
            f"({other}, layer {_rank(other)})"
        )


def test_no_import_cycles():
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for imported in sorted(GRAPH[module]):
            if state.get(imported) == "open":
                cycle = path[path.index(imported) :] + [imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, path + [imported])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_small(module):
    source = MODULES[module].read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{module} has grown past one concern"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{module}: split {long}"


# and ahn_jax.cli, their shared `--config` plumbing
ENTRY_POINTS = {_ for layer in LAYERS[-2:] for _ in layer} - {"ahn_jax"} | {"ahn_jax.cli"}


def _reads_flags(tree: ast.AST) -> list[int]:
    """Lines that touch absl's FLAGS outside an `if __name__ == "__main__":` block."""

    def is_main_block(node):
        return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)

    found = []

    def visit(node):
        if is_main_block(node):
            return
        if isinstance(node, ast.Name | ast.Attribute) and ast.unparse(node).endswith("FLAGS"):
            found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("ahn_jax.")))
def test_only_entry_points_read_flags(module):
    if module in ENTRY_POINTS or module.endswith(".__main__"):
        return
    lines = _reads_flags(ast.parse(MODULES[module].read_text()))
    assert not lines, f"{module} reads absl FLAGS at lines {lines}: take arguments instead"


def test_the_checks_see_a_violation():
    """The rules above can fail: a model module importing training would be refused."""
    assert _rank(_unit("ahn_jax.model.decoder")) < _rank(_unit("ahn_jax.training.loop"))
    assert _unit("ahn_jax.costs.table") == "ahn_jax.costs"
    assert "ahn_jax.model.transformer" in GRAPH["ahn_jax.training.run"]
    assert _reads_flags(ast.parse("from absl import flags\ndef f():\n    return flags.FLAGS.x"))
    assert not _reads_flags(ast.parse("if __name__ == '__main__':\n    print(FLAGS.x)"))
