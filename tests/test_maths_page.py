"""docs/maths.md against the code that cites it.

Docstrings cite the page as ``docs/maths.md §4.5``, ``docs/maths.md §4.3–4.6``,
``docs/maths.md eq. (8)``, ``docs/maths.md eqs. 13–15``, ``docs/maths.md eqs. 5/14/17/21`` or
``docs/maths.md eq. (DN6)``. The page marks its sections with numbered headings (``### 4.5 …``)
and its equations with ``\\tag{…}``. Checked here:

* no citation of the old maths file outside the repository is left in the code;
* every cited section and equation exists on the page;
* every ``hj.…`` object the page names exists in the package;
* the page's section numbers and equation tags are unique.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "maths.md"
SOURCES = ("hamjax", "tests", "benchmarks", "examples")
_THIS = Path(__file__).resolve()

_HEADING = re.compile(r"^#{1,6}[ \t]+(\d+(?:\.\d+)*)\.?[ \t]", re.M)
_TAG = re.compile(r"\\tag\{([^}]*)\}")
_NAME = re.compile(r"`(hj(?:\.[A-Za-z_]\w*)+)")

# one equation number: 8, (8), DN6, (DN 6), T1, C3
_NUM = r"(?:[A-Z]{1,2}\s?)?\d+"
_EQ = rf"\(?{_NUM}\)?"
_EQ_SEP = r"\s*(?:[–-]|/|,|\band\b)\s*"
_EQS = rf"eqs?\.\s*{_EQ}(?:{_EQ_SEP}{_EQ})*"
_SEC = r"§\s?\d+(?:\.\d+)*(?:\s*[–-]\s*\d+(?:\.\d+)*)?"
_REF = rf"(?:{_SEC}|{_EQS})"
_CITATION = re.compile(
    rf"docs/maths\.md,?\s+\(?({_REF}(?:\s*(?:,|;|\band\b)\s*{_REF})*)"
)
# the old file, cited by name, or as "MATH eq. …" / "MATH §…"
_OLD = re.compile(r"MATH\.md|\bMATH\s+(?:eqs?\.|§)")


def _norm(tag: str) -> str:
    return re.sub(r"\s+", "", tag)


def _split_prefix(tag: str) -> tuple[str, int]:
    m = re.fullmatch(r"([A-Z]*)(\d+)", tag)
    if m is None:
        raise ValueError(f"not an equation number: {tag!r}")
    return m.group(1), int(m.group(2))


def _sections(text: str) -> list[str]:
    """Section numbers cited in ``text`` (``§4.3–4.6`` expands to 4.3, 4.4, 4.5, 4.6)."""
    out = []
    for m in re.finditer(r"§\s?(\d+(?:\.\d+)*)(?:\s*[–-]\s*(\d+(?:\.\d+)*))?", text):
        first, last = m.group(1), m.group(2)
        if last is None:
            out.append(first)
            continue
        head_a, _, tail_a = first.rpartition(".")
        head_b, _, tail_b = last.rpartition(".")
        if head_a == head_b and int(tail_a) <= int(tail_b):
            prefix = head_a + "." if head_a else ""
            out.extend(f"{prefix}{i}" for i in range(int(tail_a), int(tail_b) + 1))
        else:
            out.extend([first, last])
    return out


def _equations(text: str) -> list[str]:
    """Equation tags cited in ``text``: ``eqs. 13–15`` gives 13, 14, 15; ``eq. (DN9)–(12)`` gives
    DN9 … DN12 (an end without a prefix takes the start's); lists are split on / , and."""
    out = []
    for m in re.finditer(_EQS, text):
        tokens = re.findall(rf"({_NUM})|([–-])", m.group(0).split(".", 1)[1])
        nums, pending_range = [], False
        for num, dash in tokens:
            if dash:
                pending_range = True
                continue
            prefix, n = _split_prefix(_norm(num))
            if pending_range and nums:
                start_prefix, start = nums[-1]
                prefix = prefix or start_prefix
                if prefix == start_prefix and start < n:
                    nums.extend((prefix, i) for i in range(start + 1, n + 1))
                else:
                    nums.append((prefix, n))
            else:
                if not prefix and nums:
                    prefix = nums[-1][0]
                nums.append((prefix, n))
            pending_range = False
        out.extend(f"{p}{n}" for p, n in nums)
    return out


def citations(source: str) -> list[tuple[int, str, list[str], list[str]]]:
    """``(line, citation text, sections, equations)`` for every citation of the page."""
    out = []
    for m in _CITATION.finditer(source):
        line = source.count("\n", 0, m.start()) + 1
        ref = m.group(1)
        out.append((line, " ".join(ref.split()), _sections(ref), _equations(ref)))
    return out


def _py_files():
    for folder in SOURCES:
        base = ROOT / folder
        if base.is_dir():
            yield from sorted(p for p in base.rglob("*.py") if p.resolve() != _THIS)


@pytest.fixture(scope="module")
def page() -> str:
    assert PAGE.is_file(), f"{PAGE} is missing"
    return PAGE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def anchors(page) -> tuple[set[str], set[str]]:
    return set(_HEADING.findall(page)), {_norm(t) for t in _TAG.findall(page)}


def test_parser_reads_every_citation_form():
    got = citations(
        "x (docs/maths.md eq. 8 with biases) y docs/maths.md eq. (5); "
        "docs/maths.md eqs. 13–15: docs/maths.md eq. (20)–(21) docs/maths.md eqs. 5/14/17/21) "
        "docs/maths.md §4.3–4.6 docs/maths.md §2.2 and §3.1:: docs/maths.md §1.3, §4.7–4.8 "
        "docs/maths.md §2, bias docs/maths.md\n    eq. (DN 6), ``H`` docs/maths.md eqs. (DN9)–(12)"
    )
    assert [(s, e) for _, _, s, e in got] == [
        ([], ["8"]),
        ([], ["5"]),
        ([], ["13", "14", "15"]),
        ([], ["20", "21"]),
        ([], ["5", "14", "17", "21"]),
        (["4.3", "4.4", "4.5", "4.6"], []),
        (["2.2", "3.1"], []),
        (["1.3", "4.7", "4.8"], []),
        (["2"], []),
        ([], ["DN6"]),
        ([], ["DN9", "DN10", "DN11", "DN12"]),
    ]
    assert [line for line, *_ in got][-3:] == [1, 1, 2]
    # a paper's own numbering is not a citation of the page
    assert citations("DN eq. 8, HAM eq. (13), HAM paper §4.1, MATH.md eq. 5") == []


def test_page_sections_and_tags_are_unique(page, anchors):
    sections = _HEADING.findall(page)
    tags = [_norm(t) for t in _TAG.findall(page)]
    assert len(sections) == len(set(sections)), "a section number appears twice"
    assert len(tags) == len(set(tags)), "an equation tag appears twice"
    for tag in tags:
        _split_prefix(tag)  # every tag is an equation number the citations can name
    sec, eqs = anchors
    assert {"1.1", "2", "4.5", "4.7", "4.8"} <= sec
    assert {"5", "8", "9", "DN6", "DN14"} <= eqs


def test_no_citation_of_the_old_maths_file():
    stale = []
    for path in _py_files():
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _OLD.search(line):
                stale.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not stale, "cite docs/maths.md instead:\n" + "\n".join(stale)


def test_every_cited_section_and_equation_exists(anchors):
    sections, tags = anchors
    found, missing = 0, []
    for path in _py_files():
        for line, ref, secs, eqs in citations(path.read_text(encoding="utf-8")):
            found += 1
            where = f"{path.relative_to(ROOT)}:{line}: docs/maths.md {ref}"
            missing += [f"{where} (no section {s})" for s in secs if s not in sections]
            missing += [f"{where} (no equation ({e}))" for e in eqs if e not in tags]
    assert found, "no citation of docs/maths.md found in the code"
    assert not missing, "\n".join(missing)


def test_every_named_object_exists(page):
    hj = importlib.import_module("hamjax")
    missing = []
    for name in sorted(set(_NAME.findall(page))):
        obj = hj
        for part in name.split(".")[1:]:
            if not hasattr(obj, part):
                missing.append(name)
                break
            obj = getattr(obj, part)
    assert not missing, "docs/maths.md names objects hamjax does not have: " + ", ".join(missing)
