"""The import graph follows the layers: each package imports only the ones below it.

    model  <  quant  <  hls  <  sim, host (host runs on a PYNQ image: numpy only)  <  baselines, sigmabranch

One exception, by design: model's point-cloud loaders read files with ``host.pointcloud`` (numpy
only, importing nothing of the project but ``host.errors``), so the board parses and normalises a
cloud with the very code training used.

Checked by importing each package's modules in a fresh interpreter and looking at ``sys.modules``
(catches indirect imports), by an AST scan of model/ (its lazy, in-function imports too), and by
an AST scan of every project file for private names (``_x``) imported from another package.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The repository's own top-level packages (what "another package" means below).
PACKAGES = ("model", "quant", "hls", "host", "sim", "baselines", "sigmabranch", "bench", "tests")
MODEL_MODULES = sorted({".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                        for p in [*(REPO / "model").glob("*.py"), *(REPO / "model" / "data").glob("*.py")]})
HLS_MODULES = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                     for p in (REPO / "hls").glob("*.py"))
HOST_MODULES = ["host.driver", "host.run", "host.int_reference", "host.router_rule", "host.backends.ref",
                "host.backends.board", "host.backends.base"]
# Modules of a forbidden package that a layer may still load (see the module docstring).
ALLOWED = {"model": ("host", "host.pointcloud", "host.errors")}
LAYERS = {  # modules -> the packages none of them may load
    "model": (MODEL_MODULES, ("quant", "hls", "host", "sim", "baselines")),
    "hls": (HLS_MODULES, ("sim",)),
    "host": (HOST_MODULES, ("torch", "cocotb", "finn", "sim")),
}


def _loaded(modules: list[str], forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Import ``modules`` one after another in one fresh interpreter; per module, the forbidden
    modules that appeared in ``sys.modules`` during its import."""
    code = f"""
import importlib, json, sys
forbidden, allowed = {forbidden!r}, {allowed!r}
def bad():
    return {{m for m in sys.modules if m.split(".")[0] in forbidden and m not in allowed}}
seen, out = bad(), {{}}
for name in {modules!r}:
    importlib.import_module(name)
    now = bad()
    out[name] = sorted(now - seen)
    seen = now
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"importing {modules} failed:\n{res.stderr[-3000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def _offenders(modules: list[str], forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """``{module: forbidden modules it loads}``, each module in its own fresh interpreter. One
    interpreter for all first (loading none there means no module loads one), then one per module
    only where something was loaded, so every offender is named, not just the first."""
    together = _loaded(modules, forbidden, allowed)
    if not any(together.values()):
        return {}
    alone = {m: _loaded([m], forbidden, allowed)[m] for m in modules}
    return {m: sorted({name.split(".")[0] for name in bad}) for m, bad in alone.items() if bad}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_importing_a_layer_loads_nothing_above_it(layer):
    modules, forbidden = LAYERS[layer]
    assert modules, f"no modules found for {layer}"
    offenders = _offenders(modules, forbidden, ALLOWED.get(layer, ()))
    assert not offenders, f"{layer} modules load {'/'.join(forbidden)}: {offenders}"


def _imports(path: Path):
    """``(line, module, names)`` of every absolute import in a file, nested ones included."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [alias.name for alias in node.names]


def _project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_model_sources_name_no_package_above_model():
    """Lazy imports inside functions do not show in sys.modules until called: scan the source."""
    above = LAYERS["model"][1]
    found = [f"{path.relative_to(REPO)}:{line}: {module}" for path in sorted((REPO / "model").rglob("*.py"))
             for line, module, _ in _imports(path) if module.split(".")[0] in above and module not in ALLOWED["model"]]
    assert not found, found


def test_no_private_names_imported_across_packages():
    found = []
    for path in _project_files():
        own = path.relative_to(REPO).parts[0]
        for line, module, names in _imports(path):
            root = module.split(".")[0]
            if root == own or root not in PACKAGES:
                continue
            private = [n for n in names + module.split(".")[1:] if n.startswith("_") and not n.startswith("__")]
            if private:
                found.append(f"{path.relative_to(REPO)}:{line}: from {module} import {', '.join(private)}")
    assert not found, found


def test_the_checks_see_what_they_look_for(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\ndef f():\n    from hls.build import _tidy, build\n    import quant.export\n")
    assert list(_imports(probe)) == [(1, "os", []), (3, "hls.build", ["_tidy", "build"]), (4, "quant.export", [])]
    loaded = _loaded(["json", "xml.dom.minidom"], ("xml",))  # xml.* arrive with minidom, not json
    assert loaded["json"] == [] and "xml.dom.minidom" in loaded["xml.dom.minidom"]
