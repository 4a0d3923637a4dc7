"""Importing the package (and the runners package) must stay cheap: no heavy frameworks."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = [
    "torch",
    "tensorflow",
    "paramiko",
    "onnxruntime",
    "onnx",
    "ai_edge_litert",
    "litert_torch",
    "jax",
    "scipy",
]


def _loaded_after(stmt: str) -> set[str]:
    code = f"import sys, json; {stmt}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out))


def test_import_edge_compress_is_lean():
    mods = _loaded_after("import edge_compress")
    assert "edge_compress" in mods
    assert not [m for m in HEAVY if m in mods]


def test_import_runners_is_lean():
    mods = _loaded_after("import runners, runners.base")
    assert "runners.base" in mods
    assert not [m for m in HEAVY if m in mods]


def test_cli_help_does_not_import_torch():
    code = (
        "import sys, json\n"
        "from edge_compress.cli import main\n"
        "rc = main(['profiles', 'list', '--json'])\n"
        "print('\\n' + json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in " + repr(HEAVY) + ")))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []
