"""A MkDocs hook: anchors for the maths page's equations and sections, usable from any page.

The page numbers its equations with ``\\tag{8}``, ``\\tag{DN6}`` inside ``$$ … $$`` blocks and its
sections with headings ``### 4.5 …``. Before each tagged block and each numbered heading this
inserts an mkdocs-autorefs anchor, ``eq-8``, ``eq-DN6``, ``sec-4-5``, so that any page (and any
docstring in the API reference) links to one equation as ``[(8)][eq-8]``; the page's source
stays plain Markdown and LaTeX (it is read on its own too).
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"^([ \t]*)\$\$\n(.*?)^[ \t]*\$\$[ \t]*$", re.M | re.S)
_TAG = re.compile(r"\\tag\{([^}]*)\}")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(\d+(?:\.\d+)*)\.?[ \t]", re.M)


def equation_id(tag: str) -> str:
    """The anchor of an equation tag: ``8`` → ``eq-8``, ``DN 6`` → ``eq-DN6``."""
    return "eq-" + re.sub(r"\s+", "", tag)


def section_id(number: str) -> str:
    """The anchor of a section number: ``4.5`` → ``sec-4-5``."""
    return "sec-" + number.replace(".", "-")


def add_anchors(markdown: str) -> str:
    def equation(m: re.Match) -> str:
        tags = _TAG.findall(m.group(2))
        if not tags:
            return m.group(0)
        indent = m.group(1)
        anchors = "".join(f"[](){{#{equation_id(t)}}}" for t in tags)
        return f"{indent}{anchors}\n\n{m.group(0)}"

    def heading(m: re.Match) -> str:
        return f"[](){{#{section_id(m.group(2))}}}\n{m.group(0)}"

    return _HEADING.sub(heading, _BLOCK.sub(equation, markdown))


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "maths.md":
        return add_anchors(markdown)
    return markdown
