"""The daemon never imports the model lab: an AST scan of every module under triage_node/, plus a fresh interpreter
that serves imports with the lab made unimportable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_daemon_module_imports_the_lab() -> None:
    offenders = [
        f"{p.relative_to(ROOT)}: {m}"
        for p in sorted((ROOT / "triage_node").rglob("*.py"))
        for m in _imported_modules(p)
        if m == "triage_lab" or m.startswith("triage_lab.")
    ]
    assert offenders == []


def test_the_daemon_imports_with_the_lab_missing() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triage_lab' or name.startswith('triage_lab.'):\n"
        "            raise ImportError('lab blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import triage_node.cli, triage_node.daemon, triage_node.pipeline, triage_node.web.app\n"
        "import triage_node.inference.registry, triage_node.inference.ich, triage_node.inference.cmb\n"
        "import triage_node.inference.infarct, triage_node.inference.segmenter\n"
        "from triage_node.cli import build_parser\n"
        "build_parser()\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
