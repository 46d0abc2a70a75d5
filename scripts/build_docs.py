"""Build the documentation site with ``mkdocs build --strict`` (``make docs``; the tests run it too).

Usage: python scripts/build_docs.py [SITE_DIR]      (default: site)

Strict mode fails on a broken link between pages, a missing anchor or a page left out of the nav.
Exit status: mkdocs's, or 2 with one line naming the extra to install when mkdocs is missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    try:
        import material  # noqa: F401  (mkdocs-material, the theme)
        import mkdocs  # noqa: F401
    except ImportError as err:
        print(f"error: the docs site needs the extra 'docs' ({err.name or 'mkdocs'} is missing): pip install -e '.[docs]'", file=sys.stderr)
        return 2
    site = sys.argv[1] if len(sys.argv) > 1 else "site"
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", site], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
