"""The package's layout: wings that import only downward, small modules and functions."""

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "elastic_keras")
# Bottom to top; the top-level modules errors, files and checks are the ground floor, cli and
# commands the roof. A module imports only from its own wing or the wings below it.
WINGS = ("backend", "data", "model", "training", "inference", "runs", "report", "sweep",
         "server")
GROUND, ROOF = ("errors", "files", "checks"), ("cli", "cli_serving", "commands", "__main__",
                                              "__init__")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 250, 50


def _modules():
    for folder, _, names in os.walk(PKG):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, PKG)[:-3].replace(os.sep, "."), path


def _level(module):
    head = module.split(".")[0]
    if head in GROUND:
        return 0
    if head in WINGS:
        return 1 + WINGS.index(head)
    assert module in ROOF, f"{module}: not in a wing, nor a top-level module"
    return len(WINGS) + 1


def _imports(path):
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("elastic_keras."):
            yield node.lineno, node.module.removeprefix("elastic_keras.")
        elif isinstance(node, ast.ImportFrom) and node.module == "elastic_keras":
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level:
            yield node.lineno, "<relative>"


def test_every_import_goes_down_or_across():
    wrong = []
    for module, path in _modules():
        for line, target in _imports(path):
            if target == "<relative>":
                wrong.append(f"{module}:{line} uses a relative import")
            elif target in ("configs",) or target.split(".")[0] not in WINGS + GROUND + ROOF:
                continue  # a name from the package's face (elastic_keras/__init__.py)
            elif _level(target) > _level(module):
                wrong.append(f"{module}:{line} imports {target} from a higher wing")
    assert not wrong, "\n".join(wrong)


def test_at_least_five_wings_and_small_modules_and_functions():
    assert sum(os.path.isfile(os.path.join(PKG, w, "__init__.py")) for w in WINGS) >= 5
    long_modules, long_functions = [], []
    for module, path in _modules():
        text = open(path, encoding="utf-8").read()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{module}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{module}.{node.name}: {n} lines")
    assert not long_modules and not long_functions, long_modules + long_functions


def test_configs_live_once_at_the_top_one_per_table_cell():
    top = sorted(os.listdir(os.path.join(REPO, "configs", "table1")))
    assert len([n for n in top if n.endswith(".toml")]) == 30
    copies = [os.path.join(f, n) for f, _, names in os.walk(PKG) for n in names
              if n.endswith(".toml")]
    assert copies == []


def test_setup_cfg_lists_every_wing():
    text = open(os.path.join(REPO, "setup.cfg"), encoding="utf-8").read()
    listed = set(re.findall(r"^\s+(elastic_keras(?:\.\w+)?)\s*$", text, re.M))
    wings = {f"elastic_keras.{w}" for w in WINGS if os.path.isdir(os.path.join(PKG, w))}
    assert wings | {"elastic_keras", "elastic_keras.configs"} <= listed


def test_the_readme_layout_names_every_module():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    missing = [m for m, path in _modules() if not m.endswith("__init__") and m != "__main__"
               and not re.search(rf"\b{re.escape(os.path.basename(path))}\b", layout)]
    assert not missing, missing
