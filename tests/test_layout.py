"""The design document's layout section (docs/design.md) names every module, config group, script and benchmark of the tree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_section() -> str:
    text = (ROOT / "docs" / "design.md").read_text()
    match = re.search(r"^## Layout\n(.*?)^## ", text, flags=re.S | re.M)
    assert match, "docs/design.md has no '## Layout' section followed by another section"
    return match.group(1)


def test_layout_names_every_file_of_the_tree():
    section = layout_section()
    missing = []
    package = ROOT / "src" / "dcgmm"
    callbacks_line = section.split("app/callbacks/", 1)[1].splitlines()[0]
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if rel.name == "__init__.py" and rel.parent != Path("core/layers"):
            continue
        if rel.parent == Path("app/callbacks"):
            if rel.stem not in callbacks_line:
                missing.append(str(rel))
        elif str(rel) not in section:
            missing.append(str(rel))
    groups = [p.name for p in (ROOT / "conf").iterdir() if p.is_dir()]
    missing += [f"conf/{g}" for g in groups if not re.search(rf"\b{g}\b", section.split("\nconf/", 1)[1].split("\nscripts/")[0])]
    for folder in ("scripts", "benchmarks"):
        line = section.split(f"\n{folder}/", 1)[1].splitlines()[0]
        for path in (ROOT / folder).iterdir():
            if path.is_file() and path.suffix in (".py", ".sh") and path.name != "__init__.py":
                if path.stem not in line:
                    missing.append(f"{folder}/{path.name}")
    assert not missing, f"docs/design.md layout section lacks: {', '.join(missing)}"


def test_layout_names_no_file_that_does_not_exist():
    section = layout_section()
    named = re.findall(r"(?<![\w/.])((?:[a-z_]+/)*[a-z_]+\.py)\b", section)
    package = ROOT / "src" / "dcgmm"
    absent = [name for name in named if not ((package / name).exists() or (ROOT / name).exists() or list(ROOT.glob(f"*/{name}")))]
    assert not absent, f"docs/design.md layout section names files that do not exist: {', '.join(absent)}"
