"""Imports inside the core run one way: each unit of `codebase/` imports only units on lower layers
(and itself). The layers, bottom first, as the README's code map gives them."""
import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "codebase"
LAYERS = [
    {"errors", "earlier_config"},
    {"config"},
    {"runtime"},                      # processes, device, progress, atomic writes, locks
    {"data", "networks"},
    {"evaluation"},
    {"training"},
    {"tasks", "settings"},
    {"dataset", "model"},
    {"engine"},
]
LAYER = {unit: number for number, units in enumerate(LAYERS) for unit in units}


def unit_of(module):
    """"codebase.training.weighting.base" -> "training"; None outside the core or for the package itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "codebase" and len(parts) > 1 else None


def core_imports(path):
    """(line, imported module) for every import of the core in `path`, at any depth of the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # "from codebase import data" imports the unit data
                yield node.lineno, node.module if unit_of(node.module) else f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)


def test_every_unit_of_the_core_has_a_layer():
    units = {path.stem for path in CORE.glob("*.py") if path.stem != "__init__"}
    units |= {path.parent.name for path in CORE.glob("*/__init__.py")}
    assert units == set(LAYER), f"place {sorted(units - set(LAYER))} in LAYERS (and the README's code map)"


def test_no_import_in_the_core_runs_upward():
    upward = []
    for path in sorted(CORE.rglob("*.py")):
        own = unit_of(".".join(path.relative_to(CORE.parent).with_suffix("").parts))
        for line, module in core_imports(path):
            target = unit_of(module)
            if own and target and target != own and LAYER[target] >= LAYER[own]:
                upward.append(f"{path.relative_to(CORE.parent)}:{line} imports {module} "
                              f"({own} is on layer {LAYER[own]}, {target} on {LAYER[target]})")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The parser finds imports inside functions too, the form upward imports hide in."""
    module = tmp_path / "m.py"
    module.write_text("def late():\n    from codebase.engine import MultiTaskTraining\n")
    assert [unit_of(name) for _, name in core_imports(module)] == ["engine"]
