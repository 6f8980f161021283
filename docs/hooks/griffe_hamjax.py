"""A griffe extension for the docs build: hamjax's docstrings and signatures as a reader sees them.

* Sphinx roles. hamjax's docstrings name other objects the Sphinx way (``:class:`Relaxation```,
  ``:func:`hamjax.relax```); Markdown has no roles and would print them. A role naming a full
  ``hamjax.…`` path becomes a cross-reference to that object's API entry; any other becomes inline
  code (``~`` shows the last component, as in Sphinx).
* Citations of the maths page. ``docs/maths.md eq. (8)`` and ``docs/maths.md §4.5`` become links
  to that equation or section of the site's maths page (anchors ``eq-8``, ``sec-4-5``, made by
  ``equation_anchors.py``); a list or range links to its first entry.
* Constructors of equinox modules. An ``eqx.Module`` without its own ``__init__`` gets one from
  its fields at class creation (it is a dataclass), which static analysis cannot see, so its API
  entry would have no signature. The signature is taken from the class itself.
"""

from __future__ import annotations

import importlib
import inspect
import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|obj|exc|const):`(~?)([^`]+)`")

_CODE = re.compile(r"(``.*?``|`[^`]*`)", re.S)
_CITATION = re.compile(
    r"docs/maths\.md,?\s+"
    r"(?:§\s?(?P<sec>\d+(?:\.\d+)*)"  # a section, §4.5
    r"|eqs?\.\s*(?P<open>\()?(?P<eq>[A-Z]{0,2}\s?\d+)(?(open)\)))"  # an equation, eq. (DN6)
)

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
    inspect.Parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
    inspect.Parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
    inspect.Parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
}


def _replace(m: re.Match) -> str:
    short, target = m.group(1), m.group(2).strip()
    shown = target.rsplit(".", 1)[-1] if short else target
    if target.startswith("hamjax."):
        return f"[`{shown}`][{target}]"
    return f"`{shown}`"


def _link(m: re.Match) -> str:
    if m.group("sec"):
        target = "sec-" + m.group("sec").replace(".", "-")
    else:
        target = "eq-" + re.sub(r"\s+", "", m.group("eq"))
    return f"[{m.group(0)}][{target}]"


def markdown_roles(text: str) -> str:
    """``text`` with every Sphinx role replaced and every maths-page citation linked (see the
    module docstring); code spans are left alone."""
    parts = _CODE.split(_ROLE.sub(_replace, text))
    # odd parts are code spans; a role became a code span or a link already
    return "".join(p if i % 2 else _CITATION.sub(_link, p) for i, p in enumerate(parts))


def _runtime_class(cls: griffe.Class):
    try:
        return getattr(importlib.import_module(cls.module.path), cls.name)
    except (ImportError, AttributeError):
        return None


def _field_init(cls: griffe.Class) -> griffe.Function | None:
    """``__init__`` of an equinox module from its runtime signature, annotations from the source."""
    runtime = _runtime_class(cls)
    if runtime is None:
        return None
    try:
        import equinox as eqx

        if not (inspect.isclass(runtime) and issubclass(runtime, eqx.Module)):
            return None
        sig = inspect.signature(runtime)
    except (TypeError, ValueError):
        return None
    params = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
    for p in sig.parameters.values():
        member = cls.all_members.get(p.name)
        annotation = getattr(member, "annotation", None)
        default = None if p.default is inspect.Parameter.empty else repr(p.default)
        params.append(griffe.Parameter(p.name, annotation=annotation, kind=_KINDS[p.kind],
                                       default=default))
    return griffe.Function("__init__", parent=cls, parameters=griffe.Parameters(*params),
                           returns="None")


class HamjaxDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_roles(obj.docstring.value)

    def on_class_members(self, *, cls: griffe.Class, **kwargs) -> None:
        if "__init__" in cls.members or not cls.module.path.startswith("hamjax"):
            return
        init = _field_init(cls)
        if init is not None:
            cls.set_member("__init__", init)
