"""host/ runs on a PYNQ image that has no torch: nothing under host/ may import it."""
import ast
from pathlib import Path

HOST = Path(__file__).resolve().parent.parent / "host"
FORBIDDEN = {"torch", "brevitas", "model", "quant", "finn", "qonnx"}


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
    probe.write_text("import numpy\nfrom torch.nn import functional\n")
    assert imported_roots(probe) == {"numpy", "torch"}
