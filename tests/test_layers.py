"""The project's files stand in layers, and imports only go down: a reader can start at the bottom.

    python -m pytest -q tests/test_layers.py

Every import of a project file counts, at the top of a file or inside a function. The test reads the source,
so it needs no import to run and fails on a file that is not in LAYERS (a new file must be placed).
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# bottom first; a file may import files of its own layer (without a cycle) and of the layers below
LAYERS = [
    ("the model", ["model.py"]),
    ("machinery", ["checkpoints.py", "failures.py", "image_files.py", "tokenizer_files.py", "columns.py",
                   "image_index.py", "formats.py", "check.py", "load_weights.py", "data.py", "shapes_world.py",
                   "bars_world.py", "demo_data.py", "curves.py", "training.py", "relevancy.py", "report.py"]),
    ("the training scripts", ["pretrain_encoders.py", "pretrain.py", "finetune.py"]),
    ("the commands that drive them", ["demo.py", "bench.py", "predict.py"]),
]
LAYER_OF = {name[:-3]: number for number, (_, names) in enumerate(LAYERS) for name in names}


def project_imports(path):
    """The project modules a file imports, anywhere in it."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    return imported & {path.stem for path in REPO.glob("*.py")}


def import_graph():
    return {path.stem: project_imports(path) for path in sorted(REPO.glob("*.py"))}


def find_cycle(graph):
    """A list of modules that import each other in a circle, or None."""
    state = {}

    def visit(module, trail):
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return trail[trail.index(imported):] + [imported] if imported in trail else [module, imported]
            if imported not in state:
                cycle = visit(imported, trail + [imported])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def test_every_file_has_a_layer():
    unplaced = sorted(set(import_graph()) - set(LAYER_OF))
    assert not unplaced, f"place these files in LAYERS: {unplaced}"


def test_imports_only_go_down():
    upward = [f"{module}.py ({LAYERS[LAYER_OF[module]][0]}) imports {imported}.py ({LAYERS[LAYER_OF[imported]][0]})"
              for module, imported_set in import_graph().items() for imported in sorted(imported_set)
              if LAYER_OF[imported] > LAYER_OF[module]]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(f"{module}.py" for module in cycle)


def test_the_checks_catch_what_they_look_for():
    """The checker itself: a circle and an upward import in a made-up graph are found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert project_imports(REPO / "model.py") == set()
    assert "model" in project_imports(REPO / "load_weights.py")
