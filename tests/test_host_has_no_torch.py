"""host/ runs on a PYNQ image that has no torch (nor cocotb, FINN, or this repository's training and
simulation packages): nothing under host/ may import them. The sim backend lives in
sim/host_backend.py and is imported by name only when asked for."""
import ast
import json
import subprocess
import sys
from pathlib import Path

HOST = Path(__file__).resolve().parent.parent / "host"
FORBIDDEN = {"torch", "brevitas", "model", "quant", "finn", "qonnx", "hls", "sim", "cocotb", "cocotb_tools"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_host_package_imports_no_torch():
    files = sorted(HOST.rglob("*.py"))
    assert files, "host/ has no Python files"
    offenders = {str(f.relative_to(HOST.parent)): sorted(imported_roots(f) & FORBIDDEN) for f in files}
    assert not {f: mods for f, mods in offenders.items() if mods}


def test_the_checker_sees_a_torch_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\nfrom torch.nn import functional\nimport sim.host_backend\n")
    assert imported_roots(probe) == {"numpy", "torch", "sim"}


def test_importing_host_loads_no_cocotb_finn_sim_or_torch():
    """In a fresh interpreter: every host module, then the modules loaded (none of FORBIDDEN, even
    indirectly or through importlib)."""
    modules = sorted(f"host.{'.'.join(p.relative_to(HOST).with_suffix('').parts)}" for p in HOST.rglob("*.py")
                     if p.name != "__init__.py") + ["host", "host.backends"]
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    res = subprocess.run([sys.executable, "-c", code], cwd=HOST.parent, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = set(json.loads(res.stdout.strip().splitlines()[-1]))
    assert "host" in loaded and "numpy" in loaded
    assert not loaded & FORBIDDEN, sorted(loaded & FORBIDDEN)
