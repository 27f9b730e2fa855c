"""The layer contract: core <- stages (export, quantize, runtime_harness) <- jobs <- cli, downhill only, no
cycles, and one import name. Read from the source with the AST, so imports inside functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
# Where each installed package lives in the repository (pyproject's package-dir).
FOLDERS = {"llama_mobile": ROOT / "llama_mobile", "llama_mobile.export": ROOT / "export",
           "llama_mobile.quantize": ROOT / "quantize", "llama_mobile.runtime_harness": ROOT / "runtime_harness"}
LAYERS = {"core": 0, "export": 1, "quantize": 1, "runtime_harness": 1, "jobs": 2, "cli": 3}
# The one place where a stage imports another, and why.
STAGE_EDGES = {
    ("runtime_harness", "export"): "the parity reference and the llama.cpp peer are built by the same loaders "
                                   "and float model as the export, so both sides read identical weights",
}
# Third-party modules whose import is deferred into functions so that `llama-mobile --help` stays instant.
HEAVY = ("torch", "torchao", "executorch", "coremltools", "transformers", "safetensors", "gguf", "numpy",
         "matplotlib", "llama_cpp", "jsonschema", "pytorch_tokenizers", "tokenizers", "mtk_converter")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if any(name.startswith(other + ".") or name == other for other in FOLDERS
                   if other != package and other.startswith(package + ".")):
                continue  # a folder mapped elsewhere
            found[name] = path
    return found


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"  # llama_mobile/__init__: the version


def imports(path: Path, module: str) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function, line) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - child.level + 1]
                                    + ([base] if base else []))
                found.append((base, in_function, child.lineno))
                found.extend((f"{base}.{alias.name}", in_function, child.lineno) for alias in child.names)
            visit(child, nested)

    visit(tree, False)
    return found


def project_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for module, path in known.items():
        graph[module] = {name for name, _, _ in imports(path, module) if name in known and name != module}
    return graph


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert packages == listed


def test_no_import_escapes_the_one_import_name():
    stray = [f"{path.relative_to(ROOT)}:{line} imports {name}" for module, path in modules().items()
             for name, _, line in imports(path, module)
             if name.split(".")[0] in ("export", "quantize", "runtime_harness")]
    assert not stray, "\n".join(stray)


def test_layers_point_downhill():
    problems = []
    for module, path in modules().items():
        mine = layer_of(module)
        for name, _, line in imports(path, module):
            if not name.startswith("llama_mobile.") or name not in modules():
                continue
            theirs = layer_of(name)
            if LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine] == 1 and theirs != mine
                                                 and (mine, theirs) not in STAGE_EDGES):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {theirs} ({name})")
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    graph = project_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    assert not cycles, cycles


def test_imports_inside_functions_only_defer_heavy_libraries():
    """A project module imported inside a function hides a cycle or a layer breach; only the CLI defers its
    jobs (they import torch), and only heavy third-party libraries are deferred elsewhere."""
    problems = []
    for module, path in modules().items():
        for name, in_function, line in imports(path, module):
            if not in_function or layer_of(module) == "cli" and name.startswith("llama_mobile."):
                continue
            if name.startswith("llama_mobile.") or name.split(".")[0] in ("export", "quantize", "runtime_harness"):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {name} imported inside a function")
    assert not problems, "\n".join(problems)


def test_a_breach_is_caught(tmp_path, monkeypatch):
    """The contract can fail: core importing a stage is reported."""
    fake = tmp_path / "llama_mobile"
    (fake / "core").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "core" / "__init__.py").write_text("")
    (fake / "core" / "bad.py").write_text("from llama_mobile.export import model\n")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "__init__.py").write_text("")
    (tmp_path / "export" / "model.py").write_text("import llama_mobile.core.bad\n")
    monkeypatch.setitem(globals(), "FOLDERS", {"llama_mobile": fake, "llama_mobile.export": tmp_path / "export"})
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    try:
        test_layers_point_downhill()
    except AssertionError as exc:
        assert "core imports export" in str(exc)
    else:
        raise AssertionError("a core module importing a stage was not reported")
    try:
        test_no_import_cycles()
    except AssertionError as exc:
        assert "llama_mobile.core.bad" in str(exc)
    else:
        raise AssertionError("a cycle was not reported")


def test_the_cli_loads_no_heavy_library_until_a_command_runs():
    """`llama-mobile --help` and `targets` stay instant: the command line and the backend registry load none
    of the heavy libraries."""
    import subprocess
    import sys

    probe = ("import sys, llama_mobile.cli, llama_mobile.export.backends; "  # `targets` reads the registry
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout


# Optional dependencies: extras or SDKs that may be absent, imported where they are used.
OPTIONAL = ("llama_cpp", "matplotlib", "coremltools", "mtk_converter", "mtk_neuron", "executorch.backends.qualcomm",
            "executorch.backends.mediatek", "executorch.backends.apple")
# Modules that defer their third-party imports, and why (anything else imports at the top).
DEFERRED = {
    "llama_mobile.core": "core is read by `--help` and every command: it stays free of heavy libraries",
    "llama_mobile.cli": "commands load their jobs (and torch) only when they run",
    "llama_mobile.export.backends": "the backend registry is read by `targets`; a backend's libraries load when "
                                    "it lowers",
    "llama_mobile.export.coreml_package": "imported by the Core ML backend, which the light registry loads",
    "llama_mobile.quantize.recipe": "the CLI reads the recipe registry for its choices",
    "llama_mobile.quantize.patterns": "the CLI reads the recipe registry for its choices",
    "llama_mobile.export.model": "the model needs only torch; ExecuTorch's LLM ops register when asked",
    "llama_mobile.runtime_harness.program": "ExecuTorch's kernels register when a program is loaded",
    "llama_mobile.runtime_harness.generate": "ExecuTorch's kernels register when a program is loaded",
    "llama_mobile.runtime_harness.bench_worker": "a fresh process per run: the thread pool is set before the "
                                                 "runtime loads",
    "llama_mobile.export.lower": "a patch imports the private module it patches only when it is on "
                                 "(core/patches.py)",
    "llama_mobile.quantize.rowwise": "a patch imports the private module it patches only when it is on",
    "llama_mobile.export.gguf_loader": "a patch imports the private module it patches only when it is on; "
                                       "transformers only for a GGUF without tokenizer.json",
    "llama_mobile.export.rotation": "torchao's spinquant prints at import: loaded only when a recipe rotates",
}


def test_deferred_imports_have_a_reason():
    problems = []
    for module, path in modules().items():
        if any(module == m or module.startswith(m + ".") for m in DEFERRED):
            continue
        for name, in_function, line in imports(path, module):
            if not in_function or name.startswith("llama_mobile") or \
                    any(name == o or name.startswith(o + ".") for o in OPTIONAL):
                continue
            problems.append(f"{path.relative_to(ROOT)}:{line}: {name} imported inside a function")
    assert not problems, "\n".join(problems)
