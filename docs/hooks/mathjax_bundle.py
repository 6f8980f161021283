"""A MkDocs hook: MathJax, bundled into the built site, so that formulas render offline.

The browser loads ``assets/mathjax/tex-mml-chtml.js`` from the site itself, never from a CDN. The
files come at build time from the ``django-static-mathjax`` package on PyPI (MathJax 3.2.2's own
``es5`` build, Apache 2.0; no Django needed), a dependency of the ``docs`` extra: the combined
TeX + MathML → CommonHTML component, and what it loads on demand beside it (TeX extensions,
fonts, the menu, accessibility). The other combined components, the SVG output and the speech
rule engine's maps are left out (the site does not use them).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

DEST = "assets/mathjax"
ENTRY = "tex-mml-chtml.js"  # mkdocs.yml's extra_javascript names DEST/ENTRY
_SKIP_DIRS = ("sre", "output/svg")


def mathjax_root() -> Path:
    """MathJax's ``es5`` folder inside the installed ``django-static-mathjax`` package."""
    spec = importlib.util.find_spec("mathjax")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        es5 = Path(root) / "static" / "mathjax" / "es5"
        if (es5 / ENTRY).is_file():
            return es5
    raise PluginError("the docs bundle MathJax from the django-static-mathjax package: install "
                      "the docs extra (pip install -e \".[docs]\")")


def bundled(es5: Path) -> list[Path]:
    """The files of ``es5`` the site carries: :data:`ENTRY` and the folders it loads from."""
    keep = []
    for path in sorted(es5.rglob("*")):
        rel = path.relative_to(es5).as_posix()
        if not path.is_file() or rel.startswith(_SKIP_DIRS):
            continue
        if "/" in rel or rel == ENTRY:  # top level: the entry only, not the other combinations
            keep.append(path)
    return keep


def on_files(files, config):
    """Add MathJax's files to the site under :data:`DEST`."""
    es5 = mathjax_root()
    for path in bundled(es5):
        rel = path.relative_to(es5).as_posix()
        files.append(File.generated(config, f"{DEST}/{rel}", abs_src_path=str(path)))
    return files
