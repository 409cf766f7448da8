"""The installed project: one package, one command, layers without cycles.

`pip install -e .` installs the package `promptkd` only: the repository's trainers/ and
datasets/ folders become promptkd.trainers and promptkd.datasets (pyproject.toml), so no
top-level `trainers` or `datasets` (Hugging Face's) is shadowed. `promptkd VERB` is the one
command line (promptkd/cli.py).
"""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

import pytest

from promptkd import cli
from tests import source_kit
from tests.source_kit import FOLDERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_requirements_txt_lists_the_pyproject_dependencies():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    expected = project["dependencies"] + project["optional-dependencies"]["test"]
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        listed = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert listed == expected


def test_promptkd_help_lists_every_verb_with_its_purpose():
    """A new interpreter: the console command's module, as `promptkd --help` runs it."""
    proc = subprocess.run([sys.executable, "-m", "promptkd", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps the purposes
    for verb, (_, purpose) in cli.VERBS.items():
        assert f" {verb} {' '.join(purpose.split())}" in text, verb


@pytest.mark.parametrize("verb", sorted(cli.VERBS))
def test_every_verb_builds_its_parser_with_the_shared_options(verb):
    parser = cli.build_parser(verb)
    sub = next(a for a in parser._actions if a.dest == "verb").choices[verb]
    options = {o for action in sub._actions for o in action.option_strings}
    assert "--debug" in options and "--help" in options


def test_an_unknown_verb_is_refused_naming_the_verbs(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["trian"])
    assert exit_.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


def test_the_install_shadows_no_top_level_trainers_or_datasets(tmp_path):
    """From another folder, the trainers and datasets import as promptkd.*, and no top-level
    `trainers` / `datasets` module of this repository exists (a Hugging Face `datasets`, where
    installed, stays importable as itself)."""
    code = ("import importlib.util as u, json, promptkd.trainers.train, promptkd.datasets; "
            "specs = {n: u.find_spec(n) for n in ('trainers', 'datasets')}; "
            "print(json.dumps({n: s.origin if s else None for n, s in specs.items()}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import json
    for name, origin in json.loads(proc.stdout.splitlines()[-1]).items():
        assert origin is None or not origin.startswith(ROOT + os.sep), (name, origin)


def _imports():
    """{module: {imported module of this project}} for every module of promptkd/, trainers/,
    datasets/, subpackages included (all imports, at module level or inside functions)."""
    graph = {module: source_kit.imported_names(module, path)
             for folder, package in FOLDERS.items() for module, path in source_kit.modules(folder, package)}
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def _packages():
    """The packages among those modules (promptkd, promptkd.trainers, their subpackages)."""
    return {module for folder, package in FOLDERS.items() for module, path in source_kit.modules(folder, package)
            if os.path.basename(path) == "__init__.py"}


def _layer(module: str) -> int:
    """0 the core, 1 the datasets, 2 the trainers, 3 the command line."""
    if module in ("promptkd.cli", "promptkd.__main__"):
        return 3
    if module.startswith("promptkd.trainers"):
        return 2
    if module.startswith("promptkd.datasets"):
        return 1
    return 0


def test_layers_import_only_downwards_and_without_cycles():
    graph = _imports()
    upward = [(m, d) for m, deps in graph.items() for d in deps
              if _layer(d) > _layer(m) and not d.endswith("__init__")]
    assert not upward, f"imports against the layers (core < datasets < trainers < cli): {upward}"
    # a cycle among the modules (packages' __init__ re-exports aside)
    packages = _packages()
    edges = {m: {d for d in deps if d not in packages} for m, deps in graph.items()}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for dep in edges[node]:
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"
    for node in edges:
        if node not in state:
            visit(node, [node])


def test_the_core_imports_no_dassl():
    """The core is plain PyTorch, usable by other projects without Dassl."""
    for module, path in source_kit.modules("promptkd", "promptkd"):  # subpackages too
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert not re.search(r"^\s*(from|import) dassl\b", text, re.M), module


def test_no_sys_path_patching_in_the_code_tests_or_benchmarks():
    """Everything imports through the installed package. (tests/pyserver.py sets sys.path[0] to
    the script's folder in the forked child, as Python itself does for `python script.py`.)"""
    patch = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*=|sys\.path\[0\]\s*=")
    found = []
    for folder in ("promptkd", "trainers", "datasets", "tests", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py") and name != "test_packaging.py":
                    path = os.path.join(dirpath, name)
                    with open(path, encoding="utf-8") as f:
                        for n, line in enumerate(f, 1):
                            if patch.search(line) and not line.lstrip().startswith("#"):
                                found.append(f"{os.path.relpath(path, ROOT)}:{n}")
    assert found == ["tests/pyserver.py:" + str(_pyserver_line())], found


def _pyserver_line() -> int:
    with open(os.path.join(ROOT, "tests", "pyserver.py"), encoding="utf-8") as f:
        return next(n for n, line in enumerate(f, 1) if "sys.path[0] =" in line)


def test_benchmarks_share_only_the_common_helpers():
    """A benchmark imports another benchmark's public API or benchmarks.common, never another's private helpers."""
    folder = Path(ROOT) / "benchmarks"
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {node.module}"
            if isinstance(node, ast.Import):
                assert not [a.name for a in node.names if a.name in {p.stem for p in folder.glob("*.py")}], \
                    f"{path.name} imports a sibling benchmark as a top-level module (use `from benchmarks import X`)"
