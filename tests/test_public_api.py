"""The public face of the package: `promptkd.__all__`, the old paths of moved modules, private
names, and the module lists of the package docstrings.

* `import promptkd` is light (no torch) and every name of `__all__` resolves (lazily).
* The modules moved into promptkd/deploy/ and promptkd/demo/ (and the old names promptkd.demo's
  and promptkd.baselines.ZeroShotCLIP) still import from their old paths, each with a
  FutureWarning that names the new one and points at the importing line; nothing in the project
  uses an old path (importing every module with FutureWarning as an error, and reading the code,
  tests, docs and scripts).
* No module imports another module's private (underscore) names.
* Each package's docstring lists exactly the modules of its folder.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import promptkd
from promptkd.moved import MOVED, OLD_DEMO_NAMES
from tests import source_kit

ROOT = source_kit.ROOT
#: Code folders read for old paths and private names (the installed packages, and the benchmarks).
CODE = {**source_kit.FOLDERS, "benchmarks": "benchmarks"}
#: Files that name the old paths on purpose.
OLD_PATH_HOMES = {os.path.join("promptkd", "moved.py"), os.path.join("tests", "test_public_api.py"),
                  os.path.join("tests", "test_names.py")}
#: Old names kept with a warning: {module: names}.
OLD_NAMES = {"promptkd.demo": set(OLD_DEMO_NAMES), "promptkd.baselines": {"ZeroShotCLIP"}}


def run_python(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


# --- the public API --------------------------------------------------------------------------

def test_import_promptkd_is_light():
    proc = run_python("import sys, promptkd; print(sorted(m for m in ('torch', 'numpy', 'dassl') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", "`import promptkd` must not import torch: keep the public API lazy"


def test_every_public_name_resolves_to_the_project():
    assert promptkd.__all__ == sorted(set(promptkd.__all__)) and promptkd.__all__
    for name in promptkd.__all__:
        value = getattr(promptkd, name)
        assert value.__module__.startswith("promptkd."), (name, value.__module__)
        assert name in dir(promptkd)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        promptkd.not_a_name  # noqa: B018


# --- old paths ---------------------------------------------------------------------------------

OLD_PATHS_SCRIPT = r"""
import json, sys, warnings
import promptkd.baselines as baselines
from promptkd.moved import MOVED


def caught(action):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        value = action()
    return value, [(str(w.message), w.category.__name__, w.filename) for w in seen]


def statement_form():
    from promptkd import convert  # a path nothing imported yet
    return convert


def old_demo_name():
    from promptkd.demo import ROLES
    return ROLES


out = {}
value, seen = caught(statement_form)
out["from promptkd import convert"] = [value is sys.modules["promptkd.deploy.convert"], seen]
for old, new in MOVED.items():
    if old != "promptkd.convert":
        value, seen = caught(lambda: __import__(old) and sys.modules[old])  # `import promptkd.hub`
        out[old] = [value is sys.modules[new], seen]
value, seen = caught(old_demo_name)
out["promptkd.demo.ROLES"] = [value is sys.modules["promptkd.demo.weights"].ROLES, seen]
value, seen = caught(lambda: baselines.ZeroShotCLIP)
out["promptkd.baselines.ZeroShotCLIP"] = [value is baselines.ZeroshotCLIP, seen]
print(json.dumps(out))
"""


def test_each_old_path_still_imports_the_moved_module_and_warns(tmp_path):
    script = tmp_path / "user_code.py"
    script.write_text(OLD_PATHS_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {**MOVED, "from promptkd import convert": "promptkd.deploy.convert",
                "promptkd.demo.ROLES": "promptkd.demo.weights.ROLES",
                "promptkd.baselines.ZeroShotCLIP": "promptkd.baselines.ZeroshotCLIP"}
    expected.pop("promptkd.convert")
    assert set(out) == set(expected)
    for old, (same, seen) in out.items():
        assert same, f"{old} must give the moved module / class itself (so that patching it patches the real one)"
        assert len(seen) == 1, (old, seen)  # once, not once per name lookup
        message, category, filename = seen[0]
        assert category == "FutureWarning" and expected[old] in message, (old, message)
        # the warning points at the user's import line, not at the import machinery or moved.py
        assert os.path.samefile(filename, script), (old, filename)


def _old_paths_in_code(root: str, skip=OLD_PATH_HOMES) -> list[str]:
    found = []
    folders = {**CODE, "tests": "tests"}
    for folder, package in folders.items():
        if not os.path.isdir(os.path.join(root, folder)):
            continue
        for module, path in source_kit.modules(folder, package, root=root):
            rel = os.path.relpath(path, root)
            if rel in skip:
                continue
            names = source_kit.imported_names(module, path)
            found += [f"{rel} imports {name}" for name in sorted(names & set(MOVED))]
            for owner, old in OLD_NAMES.items():
                found += [f"{rel} imports {owner}.{name}" for name in sorted(old) if f"{owner}.{name}" in names]
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            found += [f"{rel}:{node.lineno} uses .ZeroShotCLIP" for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and node.attr == "ZeroShotCLIP"]
    return found


def _text_forms(old: str) -> str:
    """How docs and scripts write an old module path: promptkd.hub / promptkd/hub(.py) for the
    core's, promptkd.trainers.pools / trainers/pools.py for the repository's trainers/ folder."""
    package, _, name = old.rpartition(".")
    if package == "promptkd.trainers":
        return rf"\bpromptkd\.trainers\.{name}\b|\btrainers/{name}\.py\b"
    return rf"\bpromptkd[./]{name}\b"


OLD_TEXT = re.compile("|".join([_text_forms(old) for old in MOVED] + ["promptkd/demo_weights"]))


def _old_paths_in_text(root: str) -> list[str]:
    found = []
    for folder in ("docs", "scripts", "configs", "."):
        base = os.path.join(root, folder)
        for dirpath, dirnames, files in os.walk(base):
            dirnames[:] = [] if folder == "." else dirnames
            for name in files:
                if name.endswith((".md", ".sh", ".yaml", ".toml", ".txt")):
                    path = os.path.join(dirpath, name)
                    with open(path, encoding="utf-8") as f:
                        for number, line in enumerate(f, 1):
                            if OLD_TEXT.search(line):
                                found.append(f"{os.path.relpath(path, root)}:{number}: {line.strip()}")
    return found


def test_nothing_in_the_project_uses_an_old_path():
    found = _old_paths_in_code(ROOT) + _old_paths_in_text(ROOT)
    assert not found, "use the new paths (promptkd/moved.py lists them): " + "; ".join(found)


def test_the_old_path_check_sees_every_form(tmp_path):
    (tmp_path / "promptkd").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "promptkd" / "a.py").write_text("from . import hub\n")
    (tmp_path / "promptkd" / "b.py").write_text("def f():\n    import promptkd.tiny\n")
    (tmp_path / "tests" / "c.py").write_text("from promptkd.demo import ROLES\nfrom promptkd import baselines\n"
                                             "baselines.ZeroShotCLIP\n")
    (tmp_path / "tests" / "ok.py").write_text("from promptkd.deploy import hub\nfrom promptkd.demo import tiny\n")
    (tmp_path / "docs" / "x.md").write_text("`promptkd.predict` and promptkd/pretrain.py; promptkd.deploy.hub\n")
    code = _old_paths_in_code(str(tmp_path), skip=set())
    assert [line.split()[0].split(":")[0] for line in code] == [
        os.path.join("promptkd", "a.py"), os.path.join("promptkd", "b.py"),
        os.path.join("tests", "c.py"), os.path.join("tests", "c.py")], code
    assert len(_old_paths_in_text(str(tmp_path))) == 1


def _project_modules() -> list[str]:
    folders = dict(source_kit.FOLDERS)
    if importlib.util.find_spec("dassl") is None:  # the Dassl glue needs Dassl (CI requires it)
        folders = {"promptkd": "promptkd"}
    return [module for folder, package in folders.items()
            for module, _ in source_kit.modules(folder, package) if not module.endswith("__main__")]


def test_importing_every_project_module_gives_no_future_warning():
    modules = _project_modules()
    code = textwrap.dedent(f"""
        import importlib
        for name in {modules!r}:
            importlib.import_module(name)
    """)
    proc = run_python(code, "-W", "error::FutureWarning")
    assert proc.returncode == 0, proc.stderr[-3000:]


# --- private names -----------------------------------------------------------------------------

def private_imports(root: str = ROOT) -> list[str]:
    """'file:line name' for every `from <project module> import _name` and every `mod._name`
    where `mod` is a project module imported by that file: another module's private name."""
    found = []
    for folder, package in CODE.items():
        if not os.path.isdir(os.path.join(root, folder)):
            continue
        for module, path in source_kit.modules(folder, package, root=root):
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            here = source_kit.containing_package(module, path).split(".")
            modules = {}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
                    for alias in node.names:
                        private = alias.name.startswith("_") and not alias.name.startswith("__")
                        if private and base.split(".")[0] in ("promptkd", "benchmarks"):
                            found.append(f"{os.path.relpath(path, root)}:{node.lineno} {base}.{alias.name}")
                        modules[alias.asname or alias.name] = f"{base}.{alias.name}"
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        modules[alias.asname or alias.name.split(".")[0]] = alias.name
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                        and isinstance(node.value, ast.Name)
                        and modules.get(node.value.id, "").split(".")[0] in ("promptkd", "benchmarks")):
                    found.append(f"{os.path.relpath(path, root)}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names():
    found = private_imports()
    assert not found, ("a name another module uses is public: drop its underscore (or keep the use inside its "
                       "module): " + "; ".join(found))


def test_the_private_name_check_sees_both_forms(tmp_path):
    (tmp_path / "promptkd").mkdir()
    (tmp_path / "promptkd" / "a.py").write_text("from .b import _hidden, shown\nfrom . import b as bee\nbee._x\n")
    (tmp_path / "promptkd" / "b.py").write_text("import os\n_hidden = shown = 1\nos._exit\nself = 0\n")
    found = private_imports(str(tmp_path))
    assert [f.split()[1] for f in found] == ["promptkd.b._hidden", "bee._x"], found


# --- the module lists of the package docstrings ---------------------------------------------------

PACKAGES = ["promptkd", os.path.join("promptkd", "deploy"), os.path.join("promptkd", "demo"), "trainers", "datasets"]
ENTRY = re.compile(r"^ {4}([A-Za-z_]\w*)(\.py|/)?(?= {2,}\S)", re.M)


def listed_and_present(folder: str) -> tuple[set[str], set[str]]:
    """(the entries of the folder's package docstring, its modules and subfolders)."""
    base = os.path.join(ROOT, folder)
    with open(os.path.join(base, "__init__.py"), encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read()), clean=False) or ""
    listed = {name for name, _ in ((m.group(1), m.group(2)) for m in ENTRY.finditer(doc))}
    present = {name[:-3] for name in os.listdir(base) if name.endswith(".py") and not name.startswith("__")}
    present |= {name for name in os.listdir(base) if os.path.isdir(os.path.join(base, name))
                and name != "__pycache__" and not name.startswith(".")}
    return listed, present


@pytest.mark.parametrize("folder", PACKAGES)
def test_the_package_docstring_lists_every_module(folder):
    listed, present = listed_and_present(folder)
    assert present - listed == set(), (f"{folder}/__init__.py's docstring lists no line for " + ", ".join(
        sorted(present - listed)) + ": add one ('    name   what it is')")
    assert listed - present == set(), (f"{folder}/__init__.py's docstring lists what is not there: "
                                       + ", ".join(sorted(listed - present)))
