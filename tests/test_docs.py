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


def build_docs(*args: str, prelude: str = "pass") -> subprocess.CompletedProcess:
    """``scripts/build_docs.py ARGS`` (what ``make docs`` runs), after ``prelude`` in the same interpreter."""
    code = f"import runpy, sys; {prelude}; sys.argv = ['build_docs.py', *{list(args)!r}]; runpy.run_path('scripts/build_docs.py', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_docs_site_builds_strictly(tmp_path):
    result = build_docs(str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr[-3000:]
    pages = {p.relative_to(ROOT / "docs").with_suffix("").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    built = {p.relative_to(tmp_path / "site").parent.as_posix() for p in (tmp_path / "site").rglob("index.html")}
    assert {page for page in pages if page != "index"} <= built, "every docs page is built"


def test_docs_without_the_extra_is_one_line_naming_it(tmp_path):
    result = build_docs(str(tmp_path / "site"), prelude="sys.modules['mkdocs'] = None")  # as if mkdocs were not installed
    assert result.returncode == 2
    assert result.stderr.strip() == "error: the docs site needs the extra 'docs' (mkdocs is missing): pip install -e '.[docs]'"
    assert not (tmp_path / "site").exists()
