"""The package's shape: no import circles, modules small enough to read, and a light ``import tcl_hf``."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tcl_hf"
REPO = PACKAGE.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every tcl_hf module that ``path`` names in an import statement, at any depth (a function-level import
    that imports back is still a circle); ``from .pkg import name`` counts as ``pkg.name`` when that is a
    module, else as ``pkg``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tcl_hf")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("tcl_hf"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_circle():
    # Guards the check below: a hand-made circle is found, a chain is not.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert "tcl_hf.trainer" in graph and "tcl_hf.data.images" in graph  # the walk sees the whole package
    assert "tcl_hf.models" in graph["tcl_hf.trainer"]
    assert cycles(graph) == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_modules_are_small_enough_to_read(path):
    limit = 350 if path.name == "trainer.py" else 400
    assert len(path.read_text().splitlines()) < limit


def private_torch_imports(path: Path) -> list[str]:
    """The torch modules ``path`` imports that have a private part (``torch.utils._python_dispatch``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.append(node.module or "")
    return [n for n in names if n.split(".")[0] == "torch" and any(part.startswith("_") for part in n.split("."))]


def test_the_package_imports_no_private_torch_module():
    # A torch release may change its private modules without notice: tools built on them (tests/op_recorder.py)
    # stay out of what users install.
    found = {module_name(p): private_torch_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}
    assert {module: names for module, names in found.items() if names} == {}


HEAVY = ("torch", "timm", "huggingface_hub", "wandb", "matplotlib", "datasets", "accelerate")


def _probe(code: str) -> list[str]:
    """The stdout lines of ``code`` run in a fresh interpreter, the last one listing the heavy modules it loaded."""
    probe = f"{code}\nimport sys\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def _loaded(lines: list[str]) -> list[str]:
    return lines[-1].split()[1:]


def _modules_after(code: str) -> list[str]:
    return _loaded(_probe(code))


def test_import_tcl_hf_is_light():
    assert _modules_after("import tcl_hf") == []


def test_train_py_help_imports_nothing_heavy():
    code = ("import runpy, sys\nsys.argv = ['train.py', '--help']\n"
            "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit:\n    pass")
    assert _modules_after(code) == []


# Each command's --help, run as its user runs it (train.py by path, the others with -m).
HELP_RUNS = {"train.py": "runpy.run_path('train.py', run_name='__main__')",
             **{m: f"runpy.run_module({m!r}, run_name='__main__', alter_sys=True)"
                for m in ("tcl_hf.export", "tcl_hf.repair", "tcl_hf.sweep")}}
HELP_SECONDS = 2.0


@pytest.mark.parametrize("command", sorted(HELP_RUNS))
def test_every_commands_help_answers_at_once_without_heavy_imports(command):
    # Heavy libraries are imported after the arguments are read: --help (and a typo) answer in well under a second
    # instead of the ~5-20 s torch, timm and datasets take to import on a cold machine.
    code = (f"import runpy, sys, time\nstart = time.perf_counter()\nsys.argv = [{command!r}, '--help']\n"
            f"try:\n    {HELP_RUNS[command]}\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
            f"print('seconds:', time.perf_counter() - start)")
    lines = _probe(code)
    seconds = float(next(line for line in lines if line.startswith("seconds:")).split()[1])
    assert _loaded(lines) == [] and seconds < HELP_SECONDS


@pytest.mark.slow
@pytest.mark.parametrize("order", ["import tcl_hf, timm", "import timm, tcl_hf"])
def test_architectures_are_registered_whichever_is_imported_first(order):
    probe = f"{order}\nprint(all(timm.is_model(n) for n in ('tcl_classifier', 'preact_resnet18_cifar')))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr[-2000:]


# Where a method's name may be tested: its registry (create_method), the validation of what the user gives (the
# config, and init.from's run, which must be a TCL run: plus.py). The model card still words and tags each saved
# run's method by name (publishing's module, reworked separately).
METHOD_NAME_TESTS_ALLOWED = {"methods.py", "config.py", "plus.py", "card.py"}


def _names_the_method(node: ast.AST, names: set[str]) -> bool:
    """``method``, ``x.method``, ``x.get("method"...)`` or a method's name (alone or in a tuple, list or set)."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_the_method(element, names) for element in node.elts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "method"
    return ((isinstance(node, ast.Constant) and node.value in names) or (isinstance(node, ast.Name) and node.id ==
            "method") or (isinstance(node, ast.Attribute) and node.attr == "method"))


def method_name_tests(source: str, names: set[str]) -> list[int]:
    """Lines of ``source`` that compare the method (or anything) with a method's name."""
    return sorted({node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Compare)
                   and any(_names_the_method(side, names) for side in (node.left, *node.comparators))})


def _method_names() -> set[str]:
    import typing

    from tcl_hf.config import Config

    return set(typing.get_args(typing.get_type_hints(Config)["method"]))


def test_the_method_name_finder_finds_string_tests():
    names = _method_names()
    found = method_name_tests('a = cfg.method != "tcl"\nb = saved.get("method") == x\nc = m in ("ce", "tcl_plus")\n'
                              'd = self.method.lr(1, 2)\ne = kind.judged == True\nf = config.get("method", "tcl")\n',
                              names)
    assert found == [1, 2, 3]


def test_methods_are_told_apart_by_their_traits_not_their_names():
    # A string test on the method elsewhere is a trait that belongs on the method classes (tcl_hf/methods.py).
    names = _method_names()
    found = {f"{path.relative_to(REPO)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
             if path.name not in METHOD_NAME_TESTS_ALLOWED for line in method_name_tests(path.read_text(), names)}
    assert not found, sorted(found)


# Where a data source's name (data.format) may be written: its own module and the registry (tcl_hf/data/), and
# the validation of what the user gives (the config's Literal).
def _source_names() -> set[str]:
    from tcl_hf.data.registry import source_names

    return set(source_names())


def source_name_literals(source: str, names: set[str]) -> list[int]:
    """Lines of ``source`` with a string constant that is a data source's name."""
    return sorted({node.lineno for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names})


def test_the_source_name_finder_finds_string_literals():
    found = source_name_literals('a = cfg.data.format == "webvision"\nb = "the webvision set"\n'
                                 'c = {"clothing1m": 1}\nd = data.get("format", "hf")\n', {"webvision", "clothing1m",
                                                                                           "hf"})
    assert found == [1, 3, 4]


def test_data_sources_are_asked_not_named():
    # A test on data.format elsewhere is something the source should answer (tcl_hf/data/registry.py's Source).
    names = _source_names()
    assert {"hf", "digits", "webvision", "clothing1m"} <= names
    found = {f"{path.relative_to(REPO)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
             if PACKAGE / "data" not in path.parents and path != PACKAGE / "config.py"
             for line in source_name_literals(path.read_text(), names)}
    assert not found, sorted(found)


def test_the_config_allows_exactly_the_registered_sources():
    import typing

    from tcl_hf.config import DataConfig

    assert set(typing.get_args(typing.get_type_hints(DataConfig)["format"])) == _source_names()


# ---- one owner of the run's phases (tcl_hf/schedule.py) ----------------------------------------------------------
WARMUP_READERS = {"schedule.py", "config.py"}      # the owner; the config's validation and start-up warning
PHASE_FIELDS = {"tcl_from_epoch", "warmup_history", "switch_clean_ratio"}
PHASE_FIELD_KEEPERS = {"schedule.py", "state.py"}   # the owner; the run state that stores them in checkpoints


def attribute_reads(source: str, names: set[str]) -> list[int]:
    """Lines of ``source`` that use an attribute or a string key named in ``names`` (``x.name``, ``x["name"]``,
    ``x.get("name")``); a plain variable or parameter of that name is not a read of the config or the state."""
    lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in names:
            lines.add(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in names:
            lines.add(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in names):
            lines.add(node.lineno)
    return sorted(lines)


def test_the_attribute_finder_finds_reads_not_names():
    source = ('a = cfg.optim.warmup_epochs\nb = d["warmup_epochs"]\nc = d.get("warmup_epochs", 0)\n'
              'def f(warmup_epochs):\n    return warmup_epochs\ns = "optim.warmup_epochs=auto"\n')
    assert attribute_reads(source, {"warmup_epochs"}) == [1, 2, 3]


@pytest.mark.parametrize("names, allowed", [({"warmup_epochs"}, WARMUP_READERS),
                                            (PHASE_FIELDS, PHASE_FIELD_KEEPERS)])
def test_only_the_schedule_reads_the_warmup_and_its_decisions(names, allowed):
    # Another module asking optim.warmup_epochs (or the state's switch) re-decides the phases on its own: it asks
    # the run's Schedule instead.
    found = {f"{path.relative_to(REPO)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
             if path.name not in allowed for line in attribute_reads(path.read_text(), names)}
    assert not found, sorted(found)
