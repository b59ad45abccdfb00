"""The package's shape: imports run one way, bottom to top, without cycles, and no module reaches into
another's private names. Reads the source only (nothing is imported), so it runs on any backend."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "kseg")

# Bottom to top: a module may import from its own layer and the ones below it, never from above. A module
# belongs to the longest name here that it equals or starts with.
LAYERS = (
    # utilities
    ("kseg", "kseg.errors", "kseg.console", "kseg.files", "kseg.provenance", "kseg.settings", "kseg.viz", "kseg.report",
     "kseg.complexity"),
    # what a model is made of and learns from
    ("kseg.models", "kseg.data", "kseg.losses", "kseg.metrics"),
    # training a model; running a trained one (checkpoint or artifact)
    ("kseg.training", "kseg.runtime"),
    # deployment, bottom to top: the modes table, graph readers and rewrites; converters; fine-tunes and quantizer
    # recipes; one export request end to end and the study of all modes
    ("kseg.deploy", "kseg.deploy.modes", "kseg.deploy.metadata", "kseg.deploy.litert_graph", "kseg.deploy.rewrites"),
    ("kseg.deploy.litert", "kseg.deploy.savedmodel", "kseg.deploy.onnx_export"),
    ("kseg.deploy.mixed_precision", "kseg.deploy.quantizer", "kseg.deploy.compression"),
    ("kseg.deploy.stage", "kseg.deploy.study"),
    # front ends
    ("kseg.demo", "kseg.cli", "kseg.commands", "kseg.__main__"),
)


def modules():
    """{"kseg.data.source": path, ...} for every module of the package (a package's __init__ under its name)."""
    found = {}
    for folder, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, name)
    return found


MODULES = modules()


def layer(module):
    """The rank in LAYERS of the longest name that `module` equals or starts with (None if none does)."""
    matches = [(len(name), rank) for rank, names in enumerate(LAYERS) for name in names
               if module == name or (name != "kseg" and module.startswith(name + "."))]
    return max(matches)[1] if matches else None


def resolve(name):
    """The longest prefix of a dotted name that is a kseg module (`kseg.data.source.Split` -> kseg.data.source)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return None


def dotted(node):
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(names)]) if isinstance(node, ast.Name) else None


def imports(module):
    """(kseg modules that `module` imports anywhere, at module level or inside functions; private-name uses)."""
    with open(MODULES[module]) as f:
        tree = ast.parse(f.read())
    package = module if MODULES[module].endswith("__init__.py") else module.rpartition(".")[0]
    targets, aliases, private = set(), {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "kseg":
                    targets.add(resolve(alias.name))
                    if alias.asname:
                        aliases[alias.asname] = resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != "kseg":
                continue
            for alias in node.names:
                target = resolve(f"{base}.{alias.name}")
                targets.add(target)
                if target == f"{base}.{alias.name}":
                    aliases[alias.asname or alias.name] = target
                elif alias.name.startswith("_") and not alias.name.startswith("__") and target != module:
                    private.append(f"{module} imports {base}.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = dotted(node)
            if not name:
                continue
            root, _, rest = name.partition(".")
            full = f"{aliases[root]}.{rest}" if root in aliases else name if root == "kseg" else None
            target = full and resolve(full)
            if target:
                if root == "kseg":
                    targets.add(target)
                attribute = full[len(target) + 1:].split(".")[0]
                if attribute.startswith("_") and not attribute.startswith("__") and target != module:
                    private.append(f"{module} uses {target}.{attribute}")
    return targets - {None, module}, private


GRAPH = {module: imports(module)[0] for module in MODULES}


def test_every_module_has_a_layer():
    assert [module for module in MODULES if layer(module) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module):
    upward = [target for target in GRAPH[module] if layer(target) > layer(module)]
    assert upward == [], f"{module} (layer {layer(module)}) imports from higher layers: {upward}"


def test_no_import_cycle():
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if target.startswith(module + "."):  # a package's __init__ importing its own modules
                continue
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target] if target in path else [module, target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_module_uses_another_modules_private_names():
    assert [line for module in MODULES for line in imports(module)[1]] == []


KEYWORD_PACKAGES = ("kseg.deploy",)  # where a call states what each argument is
MAX_POSITIONAL = 4


def test_deployment_calls_name_their_arguments():
    wide = []
    for module, path in MODULES.items():
        if any(module == name or module.startswith(name + ".") for name in KEYWORD_PACKAGES):
            with open(path) as f:
                tree = ast.parse(f.read())
            wide += [f"{path}:{node.lineno}: {ast.unparse(node.func)} with {len(node.args)} positional arguments"
                     for node in ast.walk(tree) if isinstance(node, ast.Call) and len(node.args) > MAX_POSITIONAL]
    assert wide == []


MAX_LINES = 300


def test_no_module_is_over_the_line_limit():
    lines = {}
    for module, path in MODULES.items():
        with open(path) as f:
            lines[module] = len(f.readlines())
    assert {module: n for module, n in lines.items() if n > MAX_LINES} == {}
