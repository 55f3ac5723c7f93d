"""The package's layout keeps the run's one-way flow: no module imports from a later stage."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dataplane"
# Each stage may import from those before it: the base modules, then the stages in the order
# a run flows, then the faces.
ORDER = (("errors", "resources", "names", "records"), ("cluster",), ("bpf",), ("traffic",),
         ("verify",), ("report",), ("send",), ("cli", "pytest_plugin"), ("__main__",))
RANK = {name: rank for rank, names in enumerate(ORDER) for name in names}


def stage(module: str) -> str:
    """dataplane.verify.paths -> verify; the package's own __init__ is ranked as the base."""
    parts = module.split(".")
    return "errors" if len(parts) == 1 or parts[1] == "__init__" else parts[1]


def runtime_imports(path: Path) -> list[str]:
    """The dataplane modules path imports, leaving out those named for type checkers only."""
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "dataplane":
            found += [f"dataplane.{a.name}" for a in node.names] if node.module == "dataplane" \
                else [node.module]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "dataplane"]
    return found


def test_no_module_imports_from_a_later_stage():
    backwards = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        mine = RANK[stage(module)]
        backwards += [f"{module} imports {target}" for target in runtime_imports(path)
                      if RANK[stage(target)] > mine]
    assert backwards == []


def test_every_stage_says_its_job_and_what_it_may_import():
    for init in sorted(PACKAGE.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc, f"{init} has no docstring"
        if init.parent != PACKAGE:
            assert "May import" in doc, f"{init}: say what the stage may import"
