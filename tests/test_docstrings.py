"""Every public name of hamjax is documented, and every documented equation cites docs/maths.md.

The API reference of the docs site is generated from these docstrings, so a name that fails here
has an empty or useless reference entry. The public API is what the package's public modules
(``hamjax`` and every module below it whose name has no leading underscore) list in ``__all__``.
Checked:

* every public module declares ``__all__`` and has a docstring of more than one line;
* every public function and class has a docstring of more than one line (a one-liner cannot say
  what a thing is *and* give its equation, arguments or shapes; the one-line signatures that
  ``dataclasses`` and ``NamedTuple`` generate fail too);
* every public constant has an attribute docstring (the string literal right after its
  assignment, which is where the docs generator reads it);
* every public method of a public class defined in hamjax (``__call__`` included, overrides of a
  hamjax base included, since the reference shows each class's own members) has a docstring of
  more than one line, and every public property a docstring; members that implement the
  interface of a third-party base class (``optimistix``/``lineax`` solver hooks, ``NamedTuple``
  and exception machinery) are documented by that library and exempt;
* every field of a public dataclass, ``eqx.Module`` or ``NamedTuple`` is named in its class's
  docstring (a code span that starts with the name, ````name```` or ````name[A]````, or a
  Google-style ``name:`` entry), or in that of the hamjax base class that declares it;
* every docstring in the maths packages that states an equation (a ````…```` span or a ``::``
  block holding a relation sign ``= ≤ ≥ ← ≈ ≺ ≻ ⪰`` and a mathematical symbol such as ``∇ Σ ∂ ᵀ
  ½ ·`` or a Greek letter; a bare range such as ``0 ≤ k ≤ N`` is not an equation) cites
  docs/maths.md in the form ``tests/test_maths_page.py`` reads (``docs/maths.md eq. (8)``,
  ``docs/maths.md §4.5``); a method may rely on its class's citation. The packages whose
  equations are not on the maths page (data, sharding, cli) are exempt, and so are the few names
  listed in ``NOT_ON_THE_PAGE`` with the reason.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

from test_maths_page import citations

import hamjax

# Packages whose formulas are not the maths page's (images, PSNR, devices, the command line).
NO_MATHS_PAGE = ("hamjax.data", "hamjax.sharding", "hamjax.cli")

# Names in the maths packages whose equations the page does not state, with the reason.
NOT_ON_THE_PAGE: dict[str, str] = {}

_RELATION = re.compile(r"(?<![=!<>])=(?!=)|[≤≥←≈≺≻⪰⪯]")
_MATH = re.compile(r"[∇∂Σ∑∫√⊙ᵀ⁻¹²½·αβγδεθλμξπρσφωΛΦτ∞‖]")
_SPAN = re.compile(r"``(.+?)``", re.S)


# ----------------------------------------------------------------------------- the public API
def _public_modules() -> list:
    mods = [hamjax]
    for info in pkgutil.walk_packages(hamjax.__path__, "hamjax."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            mods.append(importlib.import_module(info.name))
    return mods


MODULES = _public_modules()


def _public_names() -> list[tuple[str, object]]:
    """``(qualified name, object)`` for every name of every public module's ``__all__``."""
    out = []
    for mod in MODULES:
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name)
            if not inspect.ismodule(obj):
                out.append((f"{mod.__name__}.{name}", obj))
    return out


NAMES = _public_names()
CLASSES = {}
for _qual, _obj in NAMES:
    if inspect.isclass(_obj) and _obj.__module__.startswith("hamjax"):
        CLASSES.setdefault(f"{_obj.__module__}.{_obj.__qualname__}", (_qual, _obj))


def _lines(doc: str | None) -> int:
    return len([line for line in (doc or "").strip().splitlines() if line.strip()])


def _own_doc(obj) -> str | None:
    """The object's own docstring (not inherited; through ``jit`` wrappers)."""
    obj = inspect.unwrap(obj) if callable(obj) and not inspect.isclass(obj) else obj
    return obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)


def _members(cls) -> list[tuple[str, object, str]]:
    """``(name, function, kind)`` for the public methods and properties ``cls`` defines itself,
    less those that implement a third-party base class's interface."""
    foreign = [b for b in cls.__mro__[1:]
               if b is not object and not b.__module__.startswith("hamjax")]
    out = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__call__":
            continue
        if any(name in vars(b) for b in foreign):
            continue
        if isinstance(member, property):
            out.append((name, member.fget, "property"))
        elif isinstance(member, staticmethod | classmethod):
            out.append((name, member.__func__, "method"))
        elif inspect.isfunction(member):
            out.append((name, member, "method"))
    return out


def _fields(cls) -> list[str]:
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return list(cls._fields)
    return []


def _declaring_docs(cls, field: str) -> list[str]:
    """Docstrings of ``cls`` and of the hamjax classes in its MRO that annotate ``field``."""
    docs = [cls.__dict__.get("__doc__") or ""]
    for base in cls.__mro__[1:]:
        if base.__module__.startswith("hamjax") and field in base.__dict__.get(
                "__annotations__", {}):
            docs.append(base.__dict__.get("__doc__") or "")
    return docs


def _names_field(doc: str, field: str) -> bool:
    return (re.search(rf"``{re.escape(field)}(?!\w)", doc) is not None
            or re.search(rf"^\s*(?:\w+,\s*)*{re.escape(field)}(?:,\s*\w+)*:", doc, re.M)
            is not None)


def _attribute_docstrings(package_dir: Path) -> dict[str, str]:
    """``{name: docstring}`` for the module-level assignments in ``package_dir`` that are followed
    by a string literal (the attribute docstrings the docs generator reads)."""
    out = {}
    files = [package_dir] if package_dir.suffix == ".py" else sorted(package_dir.glob("*.py"))
    for path in files:
        body = ast.parse(path.read_text(encoding="utf-8")).body
        for stmt, nxt in zip(body, body[1:], strict=False):
            targets = (stmt.targets if isinstance(stmt, ast.Assign)
                       else [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
            if (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                for t in targets:
                    if isinstance(t, ast.Name):
                        out[t.id] = nxt.value.value
    return out


# ---------------------------------------------------------------------------- equations
def _equation_spans(doc: str) -> list[str]:
    spans = _SPAN.findall(doc)
    lines = doc.splitlines()
    in_block, indent = False, 0
    for line in lines:
        stripped = line.strip()
        width = len(line) - len(line.lstrip())
        if in_block:
            if stripped and width <= indent:
                in_block = False
            elif stripped:
                spans.append(stripped)
                continue
        if stripped.endswith("::"):
            in_block, indent = True, width
    return [s for s in spans if _RELATION.search(s) and _MATH.search(s)]


def _cites(doc: str) -> bool:
    return bool(citations(doc or ""))


def _in_maths_package(qual: str) -> bool:
    return not qual.startswith(NO_MATHS_PAGE)


# --------------------------------------------------------------------------------- tests
def test_the_walk_finds_the_api():
    """The checks below see every package and a known sample of names (a broken walk would
    pass them all vacuously)."""
    mods = {m.__name__ for m in MODULES}
    assert {"hamjax", "hamjax.lagrangians", "hamjax.synapses", "hamjax.solvers",
            "hamjax.sharding", "hamjax.data", "hamjax.models", "hamjax.capacity",
            "hamjax.train", "hamjax.analysis", "hamjax.cli"} <= mods
    quals = {q for q, _ in NAMES}
    assert {"hamjax.relax", "hamjax.HAM", "hamjax.synapses.Dense", "hamjax.train.fit",
            "hamjax.data.CORRUPTIONS", "hamjax.analysis.stability"} <= quals
    assert len(NAMES) > 150
    assert ("activation", hamjax.lagrangians.ReLU.activation, "method") in _members(
        hamjax.lagrangians.ReLU)
    # third-party interface hooks are left to their library; hamjax's own methods are not
    members = {n for n, _, _ in _members(hamjax.solvers.Anderson)}
    assert "step" not in members and "init" not in members
    assert _fields(hamjax.Layer) == ["shape", "lagrangian", "tau", "bias"]


def test_the_equation_rule_reads_equations():
    """What counts as a stated equation, and what as a citation."""
    assert _equation_spans("Activation ``g = ∇L(x)``.")
    assert _equation_spans("Energy::\n\n    E = −½ gᵀ W g\n\nand more.")
    assert _equation_spans("``τ_A ẋ_A = c_A + I_A − x_A``")
    assert not _equation_spans("``method=\"ode\"`` or ``axis=-1``, shape ``(*batch, N)``")
    assert not _equation_spans("``τ_A > 0`` and ``x == y``")
    assert not _equation_spans("``0 ≤ num_flips ≤ N``")
    assert _names_field("``directions[A]`` is a matrix", "directions")
    assert _names_field("Attributes:\n    x_test, y_test: the test part", "y_test")
    assert not _names_field("``directions_2`` and directions", "directions")
    assert _cites("(docs/maths.md eq. 8)") and _cites("docs/maths.md §4.5")
    assert not _cites("HAM eq. (13)") and not _cites("docs/maths.md")


def test_public_modules_declare_all_and_a_docstring():
    bad = [m.__name__ for m in MODULES if not hasattr(m, "__all__") or _lines(m.__doc__) < 2]
    assert not bad, "public modules without __all__ or a docstring of 2+ lines: " + ", ".join(bad)


def test_every_public_function_and_class_has_a_docstring():
    bad = [q for q, obj in NAMES
           if (inspect.isclass(obj) or callable(obj)) and _lines(_own_doc(obj)) < 2]
    assert not bad, "public names without a docstring of 2+ lines:\n" + "\n".join(bad)


def test_every_public_constant_has_an_attribute_docstring():
    bad = []
    for qual, obj in NAMES:
        if inspect.isclass(obj) or callable(obj):
            continue
        mod = importlib.import_module(qual.rpartition(".")[0])
        where = Path(mod.__file__)
        docs = _attribute_docstrings(where.parent if where.name == "__init__.py" else where)
        if _lines(docs.get(qual.rpartition(".")[2])) < 1:
            bad.append(qual)
    assert not bad, "public constants without an attribute docstring: " + ", ".join(bad)


def test_every_public_method_and_property_has_a_docstring():
    bad = []
    for qual, cls in CLASSES.values():
        for name, fn, kind in _members(cls):
            need = 1 if kind == "property" else 2
            if _lines(getattr(fn, "__doc__", None)) < need:
                bad.append(f"{qual}.{name} ({kind}: {need}+ lines)")
    assert not bad, "public members without a docstring:\n" + "\n".join(bad)


def test_every_field_is_named_in_its_class_docstring():
    bad = []
    for qual, cls in CLASSES.values():
        for field in _fields(cls):
            if not any(_names_field(doc, field) for doc in _declaring_docs(cls, field)):
                bad.append(f"{qual}.{field}")
    assert not bad, "fields not named in their class docstring:\n" + "\n".join(bad)


def _documented_in_maths_packages():
    """``(qualified name, docstring, class docstring or None)`` for every public function, class
    and member of the maths packages."""
    out = []
    for qual, obj in NAMES:
        if _in_maths_package(qual) and (inspect.isclass(obj) or callable(obj)):
            out.append((qual, _own_doc(obj) or "", None))
    for qual, cls in CLASSES.values():
        if _in_maths_package(qual):
            for name, fn, _ in _members(cls):
                out.append((f"{qual}.{name}", fn.__doc__ or "", cls.__doc__ or ""))
    return out


def test_every_stated_equation_cites_the_maths_page():
    documented = _documented_in_maths_packages()
    docs = {q: d for q, d, _ in documented}
    stale = [q for q in NOT_ON_THE_PAGE
             if q not in docs or not _equation_spans(docs[q]) or _cites(docs[q])]
    assert not stale, "NOT_ON_THE_PAGE lists names that no longer need it: " + ", ".join(stale)
    bad = []
    for qual, doc, class_doc in documented:
        if qual in NOT_ON_THE_PAGE or not _equation_spans(doc):
            continue
        if not (_cites(doc) or (class_doc is not None and _cites(class_doc))):
            bad.append(f"{qual}: {_equation_spans(doc)[0][:60]}")
    assert not bad, ("docstrings that state an equation without citing docs/maths.md "
                     "(cite it, or list the name in NOT_ON_THE_PAGE with the reason):\n"
                     + "\n".join(bad))
