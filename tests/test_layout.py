"""The package layout docs/architecture.md describes: data flows one way, so a package imports
only from the packages listed before it (imports inside functions count too)."""

import ast
from pathlib import Path

import mttag

ROOT = Path(mttag.__file__).parent
# docs/architecture.md's table, in order; the top-level modules by what they hold
ORDER = ["util", "top", "audio", "models", "inference", "weights", "filetags", "training", "runs", "api", "engines",
         "cli", "hosts"]
TOP = {"constants", "errors", "device"}
# Edges against the order, each with its reason.
ALLOWED = {
    # `mttag tag` records each file's audio fingerprint so that `mttag write` can later tell that the
    # audio it tagged is the audio it writes into; the fingerprint needs the containers' layout,
    # which lives with the tag writer.
    ("mttag.inference.tagging", "mttag.filetags.fingerprint"),
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "mttag":
        return None
    if len(parts) == 1 or parts[1] in TOP:
        return "top"
    if parts[1] == "beets_support":
        return "hosts"
    return parts[1] if parts[1] in ORDER else None


def _imports(path: Path):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    module = ".".join(p for p in rel.parts if p != "__init__")
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                targets = [node.module or ""]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            yield module, target, node.lineno


def test_packages_import_only_from_those_before_them():
    against = []
    for path in sorted(ROOT.rglob("*.py")):
        for module, target, line in _imports(path):
            src, dst = _layer(module), _layer(target)
            if module in ("mttag", "mttag.__main__") or src is None or dst is None or src == dst:
                continue
            if ORDER.index(dst) > ORDER.index(src) and (module, target) not in ALLOWED:
                against.append(f"{module}:{line} ({src}) imports {target} ({dst})")
    assert not against, "\n".join(against)


def test_every_package_is_on_the_map():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(ORDER), packages - set(ORDER)
    text = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for name in packages:
        assert f"`{name}/`" in text, name
