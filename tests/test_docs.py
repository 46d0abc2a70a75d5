"""The README is a landing page whose links and picture exist, and the documentation site builds
with ``mkdocs build --strict`` (a broken link between pages, or a page missing from the nav, fails)."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_is_a_landing_page():
    lines = README.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; keep it a landing page (details go to docs/)"
    assert "python train.py model=dcgmm3 data=fashion" in README
    assert "make train" in README and "make test" in README
    assert "wandb sync" in README and "logger.wandb.offline=false" in README
    first_section = README.split("\n## ", 1)[0]
    assert re.search(r"!\[[^\]]*\]\(docs/images/[\w.-]+\.png\)", first_section), "a picture of samples comes before the first section"


def test_readme_links_point_at_files_that_exist():
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links nothing"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links files that do not exist: {missing}"
    for name in ("LICENSE", "CITATION.cff", "results/RESULTS.md"):
        assert name in local


def test_citation_file_cites_the_paper_and_the_software():
    yaml = pytest.importorskip("yaml")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software" and citation["license"] == "MIT"
    paper = citation["preferred-citation"]
    assert [a["family-names"] for a in paper["authors"]] == ["Gepperth", "Pfülb"] and paper["year"] == 2021
    assert "IJCNN" in paper["collection-title"] and "Deep Convolutional Gaussian Mixture Models" in paper["title"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_docs_site_builds_strictly(tmp_path):
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError as err:
        pytest.fail(f"the docs site needs the extra 'docs' ({err.name} is missing): pip install -e '.[docs]'")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pages = {p.relative_to(ROOT / "docs").with_suffix("").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    built = {p.relative_to(tmp_path / "site").parent.as_posix() for p in (tmp_path / "site").rglob("index.html")}
    assert {page for page in pages if page != "index"} <= built, "every docs page is built"
