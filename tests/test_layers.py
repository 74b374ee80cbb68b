"""The import rule (docs/architecture.md): a module imports only from layers below its own
(and from its own package). Checked on the source, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "reflowma"

# bottom to top; names on one level do not import each other
LAYERS = [("registry",), ("core",), ("models", "data"), ("evaluation", "objectives"),
          ("infra",), ("training",), ("stages",), ("report", "theory"), ("cli",), ("__main__",)]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}
ROOT_OK = {"__init__"}  # reflowma/__init__.py (the version) may be imported from anywhere


def _unit(module: str) -> str:
    """reflowma.a.b -> a (the top-level package or module under reflowma)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("reflowma")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "reflowma":
                out += [(node.lineno, f"reflowma.{a.name}") for a in node.names]
            elif node.module.startswith("reflowma."):
                out.append((node.lineno, node.module))
    return out


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PKG.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").is_file()))}
    assert units - ROOT_OK - set(LEVEL) == set()


def test_imports_go_down():
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        own = rel.parts[0].removesuffix(".py")
        if own in ROOT_OK:
            continue
        for line, mod in _imports(path):
            target = _unit(mod)
            if target == own or target in ROOT_OK:
                continue
            if target in LEVEL and LEVEL[target] >= LEVEL[own]:
                bad.append(f"{rel}:{line} ({own}) imports {mod} ({target})")
    assert not bad, "\n".join(bad)
