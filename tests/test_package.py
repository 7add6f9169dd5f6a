"""The package's shape: public names of `bonsynth.generate`, and the data files pyproject ships."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generate_exports_its_public_names():
    import bonsynth.generate as gen

    assert gen.__file__ is not None  # a regular package, not a namespace
    expected = {"BestOfN", "Completion", "FilePrompts", "GenerateConfig", "GenerationBackend", "GenerationResult",
                "PromptSource", "SamplingConfig", "make_backend", "run_generate", "run_generate_ray", "summarize",
                "best_of_n_step", "Scorer"}
    assert set(gen.__all__) == expected
    from bonsynth.generate.api import BestOfN
    from bonsynth.generate.pipeline import GenerateConfig, run_generate

    assert (gen.BestOfN, gen.GenerateConfig, gen.run_generate) == (BestOfN, GenerateConfig, run_generate)
    for name in gen.__all__:
        assert getattr(gen, name) is not None
    assert importlib.import_module("bonsynth.generate.outputs").row_bytes  # submodules still import as before


def test_importing_generate_stays_cheap():
    """The names load on first use: `import bonsynth.generate` pulls in neither torch nor the pipeline."""
    code = "import sys, bonsynth.generate; print('torch' in sys.modules, 'bonsynth.generate.pipeline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_declared_package_data_exists():
    """Every file pattern under [tool.setuptools.package-data] matches a file (py.typed among them)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = cfg["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["bonsynth"]
    missing = [f"{pkg}/{pattern}" for pkg, patterns in data.items() for pattern in patterns
               if not list((ROOT / pkg.replace(".", "/")).glob(pattern))]
    assert not missing


def test_one_spelling_normalize_in_identifiers():
    """Code says `normalize` (as `data/normalize.py` and merge's `normalize` do); British prose in docstrings
    and comments is left alone."""
    import ast

    found = []
    for path in sorted((ROOT / "bonsynth").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append(node.name)
            elif isinstance(node, ast.Name):
                names.append(node.id)
            elif isinstance(node, ast.Attribute):
                names.append(node.attr)
            elif isinstance(node, ast.arg):
                names.append(node.arg)
            elif isinstance(node, ast.keyword) and node.arg:
                names.append(node.arg)
            elif isinstance(node, ast.alias):
                names.append(node.asname or node.name)
            elif isinstance(node, ast.Dict):  # keys written to files or read from configs
                names.extend(k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
            found.extend(f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if "normalis" in n.lower())
    assert not found


def test_one_finish_reason_rule_for_every_backend():
    from bonsynth.generate.backends import base, openai_backend, vllm_backend

    assert openai_backend.normalize_finish_reason is vllm_backend.normalize_finish_reason is base.normalize_finish_reason
    assert [base.normalize_finish_reason(r) for r in ("length", "max_tokens", "stop", "abort", None)] == [
        "length", "length", "stop", "stop", "stop"]
