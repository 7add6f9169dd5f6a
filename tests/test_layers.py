"""The import rule between bonsynth's layers (issue 14, point 4), checked on the source so it stays true.

Lower layers never import higher ones: `data`, `select`, `models`, `errors`, `merge`, `rm` (and the shared
low modules beside them) import none of `generate`, `loop`, `cli`, `demo` or `serve`; `generate` imports
none of `loop`, `cli` or `demo`. Every import counts, at module level or inside a function, since a lazy
import is still a dependency.

One exemption: `bonsynth.modelref` is the one resolver of `demo:` references. It may import `bonsynth.demo`
inside its functions (the demo models are built by the RM trainer, so only when a demo model is named);
everything else, `loop` included, resolves `demo:` through it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bonsynth"

HIGH = ("generate", "loop", "cli", "demo", "serve")
LOW = (
    # the layers the issue names
    "data", "select", "models", "errors", "merge", "rm",
    # shared modules below `rm` and `generate` (what both of them use)
    "models_gguf", "vllm_engine", "batching", "modelref", "outdir", "locks", "redact", "settings",
)
FORBIDDEN: dict[str, tuple[str, ...]] = {**{low: HIGH for low in LOW}, "generate": ("loop", "cli", "demo")}
# (importing module, imported layer): allowed, and why
EXEMPT = {("bonsynth.modelref", "demo"): "the one demo: resolver builds demo models lazily"}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package_dir: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, at any depth (functions, methods, branches)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path, package_dir).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from bonsynth import demo` names the layer in the alias, not the module
            if target == "bonsynth":
                found.extend((node.lineno, f"bonsynth.{alias.name}") for alias in node.names)
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "bonsynth" else None


def violations(package: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        mod = module_name(path, package)
        forbidden = FORBIDDEN.get(layer_of(mod) or "", ())
        for line, target in imports_of(path, package):
            layer = layer_of(target)
            if layer in forbidden and (mod, layer) not in EXEMPT:
                out.append(f"{mod} imports {target} ({path.relative_to(package.parent)}:{line}): "
                           f"{layer_of(mod)} must not import {layer}")
    return out


def test_lower_layers_never_import_higher_ones():
    found = violations()
    assert not found, "layer rule broken:\n" + "\n".join(found)


def test_every_named_layer_exists():
    """A renamed layer would silently drop out of the rule."""
    missing = [name for name in (*LOW, "generate") if not (PACKAGE / name).is_dir()
               and not (PACKAGE / f"{name}.py").is_file()]
    assert not missing


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "bonsynth"
    (pkg / "rm").mkdir(parents=True)
    (pkg / "generate").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rm" / "__init__.py").write_text("")
    (pkg / "rm" / "lazy.py").write_text("def f():\n    from bonsynth.generate.backends import vllm_backend\n")
    (pkg / "rm" / "rel.py").write_text("from ..loop import runner\n")
    (pkg / "generate" / "__init__.py").write_text("from bonsynth import demo\nfrom bonsynth.rm import lazy\n")
    found = violations(pkg)
    assert found == [
        "bonsynth.generate imports bonsynth.demo (bonsynth/generate/__init__.py:1): generate must not import demo",
        "bonsynth.rm.lazy imports bonsynth.generate.backends (bonsynth/rm/lazy.py:2): rm must not import generate",
        "bonsynth.rm.rel imports bonsynth.loop (bonsynth/rm/rel.py:1): rm must not import loop",
    ]


@pytest.mark.parametrize("name", sorted(EXEMPT))
def test_exemptions_are_still_needed(name):
    """An exemption that no import uses any more is removed, so the rule does not stay wider than it must."""
    module, layer = name
    path = PACKAGE / (module.split(".", 1)[1].replace(".", "/") + ".py")
    assert any(layer_of(target) == layer for _, target in imports_of(path))
