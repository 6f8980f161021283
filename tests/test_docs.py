"""The documentation against the code: examples that cannot rot, and a reference entry for every
public name.

* Every ```` ```python ```` block of README.md and of every page under docs/ runs: the blocks of
  one page in order, in one namespace (a page may build on its earlier blocks), in a temporary
  working folder. The pages that call ``make_mesh(N)`` run together in one fresh process with
  ``N`` forced host devices. A block that cannot run here is marked by a
  ``<!-- skip-test: reason -->`` line just before it; the skips are counted, each needs its
  reason, and there are few.
* Every command line in a ```` ```bash ```` block that runs ``hamjax …`` is parsed by the
  command's own parser (nothing runs), ``python -m benchmarks …`` by the benchmarks' parser and
  ``python examples/NAME.py …`` by the example's, so a renamed flag fails here.
* Every name in the ``__all__`` of hamjax and of each of its packages has an entry
  (``::: hamjax.package.Name``) on an API page under docs/api/, and every entry names a public
  object; every page is in the site's navigation; generated-figure blocks are well formed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import textwrap
import time
import traceback
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
PACKAGES = ("hamjax", "hamjax.lagrangians", "hamjax.synapses", "hamjax.solvers",
            "hamjax.sharding", "hamjax.data", "hamjax.models", "hamjax.capacity", "hamjax.train",
            "hamjax.analysis")
# code that needs what a test machine has not got (several hosts); each skip names its reason
MAX_SKIPS = 1

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)[^\n]*\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.M | re.S,
)
_SKIP = re.compile(r"<!--\s*skip-test:(?P<reason>.*?)-->\s*$")
_MESH = re.compile(r"make_mesh\(\s*(\d+)\s*\)")
_SHELL = ("bash", "sh", "shell", "console")
_RESULT = "DOCS-PAGE-RESULT "  # a line of the device pages' process: [page, error or null]


@dataclasses.dataclass
class Block:
    lang: str
    code: str
    line: int  # of the opening fence, 1-based
    skip: str | None  # the reason of a skip-test marker ("" when it gives none)


def code_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, dedented, with their skip markers."""
    blocks = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = [s for s in text[: m.start()].splitlines() if s.strip()]
        marker = _SKIP.search(before[-1].strip()) if before else None
        skip = marker.group("reason").strip() if marker else None
        body = textwrap.dedent(m.group("body"))
        blocks.append(Block(m.group("lang").lower(), body, line, skip))
    return blocks


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _blocks(path: Path, langs) -> list[Block]:
    return [b for b in code_blocks(path.read_text(encoding="utf-8")) if b.lang in langs]


# ------------------------------------------------------------------------------ python blocks
def run_page(path: Path) -> list[tuple[int, float]]:
    """Run the page's Python blocks in order in one namespace, in the current folder; returns
    ``(line, seconds)`` per block run. A failing block raises AssertionError naming its line."""
    import matplotlib

    matplotlib.use("Agg")
    # a real module, so that classes defined on the page (dataclasses, equinox modules) find it
    module = types.ModuleType("hamjax_docs_page")
    sys.modules[module.__name__] = module
    try:
        return _run_blocks(path, module.__dict__)
    finally:
        del sys.modules[module.__name__]
        import matplotlib.pyplot as plt

        plt.close("all")


def _run_blocks(path: Path, namespace: dict) -> list[tuple[int, float]]:
    timings = []
    for block in _blocks(path, ("python", "py")):
        if block.skip is not None:
            continue
        t0 = time.perf_counter()
        try:
            code = compile(block.code, f"{_rel(path)}:{block.line}", "exec")
            exec(code, namespace)  # noqa: S102 - running the documentation is the point
        except Exception as e:
            tb = traceback.format_exc(limit=-3)
            raise AssertionError(f"{_rel(path)}: the block at line {block.line} failed: "
                                 f"{type(e).__name__}: {e}\n{tb}") from e
        timings.append((block.line, time.perf_counter() - t0))
    return timings


def _devices(path: Path) -> int:
    code = "\n".join(b.code for b in _blocks(path, ("python", "py")) if b.skip is None)
    return max([1, *(int(n) for n in _MESH.findall(code))])


_PYTHON_PAGES = [p for p in PAGES if any(b.skip is None for b in _blocks(p, ("python", "py")))]
# the pages that run in another process (several devices) last: that process runs meanwhile
_PYTHON_PAGES.sort(key=lambda p: _devices(p) > 1)


@pytest.fixture(scope="module", autouse=True)
def device_process(request, tmp_path_factory):
    """The pages that need several devices, started at once in one fresh process with forced
    host devices (they must exist before JAX starts). It runs beside the other pages, on the
    core this single-process test run leaves idle; their tests come last and wait for it."""
    selected = {item.name for item in request.session.items}
    pages = [p for p in _PYTHON_PAGES if _devices(p) > 1
             and f"test_python_blocks_run[{_rel(p)}]" in selected]
    if not pages:
        yield None
        return
    devices = max(_devices(p) for p in pages)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]),
        # conftest's compilation flags carry over; any earlier device count is replaced
        XLA_FLAGS=" ".join([f for f in os.environ.get("XLA_FLAGS", "").split()
                            if not f.startswith("--xla_force_host_platform_device_count")]
                           + [f"--xla_force_host_platform_device_count={devices}"]))
    cwd = tmp_path_factory.mktemp("device_pages")
    proc = subprocess.Popen([sys.executable, __file__, *map(str, pages)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield pages, proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def device_pages(device_process) -> dict[str, str | None]:
    """``{page: None if it ran, else the error}`` for the pages of :func:`device_process`."""
    pages, proc = device_process
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    results = {}
    for line in stdout.splitlines():
        if line.startswith(_RESULT):
            page, error = json.loads(line[len(_RESULT):])
            results[page] = error
    for page in pages:
        results.setdefault(_rel(page), f"no result (exit {proc.returncode}):\n{stdout[-3000:]}"
                                        f"\n{stderr[-3000:]}")
    return results


# the pages whose blocks take longest (they train or relax MNIST-sized nets): the slow tier
_SLOW_PAGES = {"README.md", "docs/getting-started.md", "docs/how-to/train-on-your-images.md",
               "docs/how-to/analyse.md", "docs/how-to/memory-retrieval.md",
               "docs/concepts/relaxation.md", "docs/concepts/training.md", "docs/index.md",
               "docs/how-to/build-a-ham.md", "docs/how-to/masked-completion.md",
               "docs/concepts/energy.md"}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow)
                                  if _rel(p) in _SLOW_PAGES else p for p in _PYTHON_PAGES],
                         ids=_rel)
def test_python_blocks_run(path, tmp_path, monkeypatch, request):
    if _devices(path) > 1:
        error = request.getfixturevalue("device_pages")[_rel(path)]
        assert error is None, f"{_rel(path)} with {_devices(path)} devices: {error}"
        return
    monkeypatch.chdir(tmp_path)
    run_page(path)


def test_skipped_blocks_are_few_and_explained():
    skipped = [(path, b) for path in PAGES for b in _blocks(path, ("python", "py"))
               if b.skip is not None]
    missing = [f"{_rel(p)}:{b.line}" for p, b in skipped if not b.skip]
    assert not missing, "skip-test markers without a reason: " + ", ".join(missing)
    assert len(skipped) <= MAX_SKIPS, (
        f"{len(skipped)} Python blocks are not run (at most {MAX_SKIPS}): "
        + ", ".join(f"{_rel(p)}:{b.line} ({b.skip})" for p, b in skipped))


def test_every_page_has_runnable_examples_where_it_shows_code():
    """The pages meant to teach by example do (a page that lost its blocks is noticed)."""
    for name in ("README.md", "docs/getting-started.md", "docs/how-to/build-a-ham.md",
                 "docs/how-to/train-on-your-images.md", "docs/how-to/analyse.md",
                 "docs/how-to/memory-retrieval.md", "docs/how-to/multi-device.md"):
        assert ROOT / name in _PYTHON_PAGES, f"{name} has no Python block that runs"


def test_code_blocks_are_found_with_their_markers():
    text = textwrap.dedent("""\
        Intro.

        ```python
        a = 1
        ```

        <!-- skip-test: needs two hosts -->
        ```python
        b = 2
        ```

        * a list item:

            ```bash
            hamjax train
            ```

        <!-- skip-test: -->

        ~~~py
        c = 3
        ~~~
        """)
    got = [(b.lang, b.code, b.line, b.skip) for b in code_blocks(text)]
    assert got == [("python", "a = 1\n", 3, None), ("python", "b = 2\n", 8, "needs two hosts"),
                   ("bash", "hamjax train\n", 14, None), ("py", "c = 3\n", 20, "")]


def test_a_failing_block_names_its_page_and_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "page.md"
    page.write_text("```python\nx = 1\n```\n\n```python\ny = x + undefined_name\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "_rel", lambda p: p.name)
    with pytest.raises(AssertionError, match=r"page.md: the block at line 5 failed: NameError"):
        run_page(page)


# ------------------------------------------------------------------------------- shell blocks
def _commands(code: str):
    """``(argv, text)`` of every simple command in a shell block (``&&``, ``;`` and ``|``
    separate commands, ``#`` starts a comment, ``VAR=value`` prefixes are dropped)."""
    for raw in code.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:
            raise AssertionError(f"cannot split {raw!r}: {e}") from None
        argv = []
        for tok in [*tokens, "&&"]:
            if tok in ("&&", "||", ";", "|"):
                while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):
                    argv.pop(0)
                if argv:
                    yield argv, line
                argv = []
            else:
                argv.append(tok)


def _parse(parser, argv) -> str | None:
    """``None`` if ``parser`` accepts ``argv``, else argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            return err.getvalue().strip() or f"exit status {e.code}"
    return None


def _owned(argv: list[str]) -> bool:
    """Whether a command runs a program of this repository (hamjax, its benchmarks, examples)."""
    return argv[0] == "hamjax" or argv[:3] == ["python", "-m", "benchmarks"] or (
        argv[0] == "python" and len(argv) > 2 and argv[1] == "-m"
        and argv[2].startswith(("benchmarks.", "hamjax"))) or (
        argv[0] == "python" and len(argv) > 1 and argv[1].startswith("examples/"))


def check_command(argv: list[str]) -> str | None:
    """Parse one command line of this repository's programs (:func:`_owned`) with the parser of
    the program it runs: argparse's message, or None when the parser accepts it."""
    from hamjax.cli._parser import build_parser

    if argv[0] == "hamjax":
        if argv[1:2] == ["bench"]:
            return check_command(["python", "-m", "benchmarks", *argv[2:]])
        return _parse(build_parser(), argv[1:])
    if argv[1] == "-m":
        if argv[2] == "benchmarks":
            from benchmarks.__main__ import build_parser as bench_parser

            return _parse(bench_parser(), argv[3:])
        return None if importlib.util.find_spec(argv[2]) else f"no module {argv[2]}"
    script = ROOT / argv[1]
    if not script.is_file():
        return f"no script {argv[1]}"
    return _parse(runpy.run_path(str(script))["build_parser"](), argv[2:])


def test_shell_commands_parse():
    checked, bad = 0, []
    for path in PAGES:
        for block in _blocks(path, _SHELL):
            for argv, line in _commands(block.code):
                if not _owned(argv):
                    continue
                checked += 1
                error = check_command(argv)
                if error:
                    bad.append(f"{_rel(path)}:{block.line}: {line}\n    {error}")
    assert checked >= 20, f"only {checked} command lines found in the docs' shell blocks"
    assert not bad, "command lines the programs reject:\n" + "\n".join(bad)


def test_command_check_rejects_what_the_parsers_reject():
    assert check_command(["hamjax", "train", "--model", "deep", "--epochs", "3"]) is None
    assert "unrecognized" in check_command(["hamjax", "train", "--no-such-flag"])
    assert "invalid choice" in check_command(["hamjax", "train", "--model", "resnet"])
    assert check_command(["python", "-m", "benchmarks", "--quick", "--only", "dynamics"]) is None
    assert check_command(["hamjax", "bench", "--only", "nothing"]) is not None
    assert check_command(["python", "examples/capacity.py", "--tiny", "--out", "d"]) is None
    assert check_command(["python", "examples/capacity.py", "--fast"]) is not None
    assert check_command(["python", "examples/missing.py"]) == "no script examples/missing.py"
    assert [a for a, _ in _commands("X=1 hamjax train --devices 4  # why\npip install -e . && "
                                    "hamjax eval runs/a")] == [
        ["hamjax", "train", "--devices", "4"], ["pip", "install", "-e", "."],
        ["hamjax", "eval", "runs/a"]]


# ---------------------------------------------------------------------------- API reference
_ENTRY = re.compile(r"^:::[ \t]+([\w.]+)", re.M)


def _api_entries() -> dict[str, str]:
    """``{dotted name: page}`` of every ``::: name`` entry on the API pages."""
    entries = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        for name in _ENTRY.findall(page.read_text(encoding="utf-8")):
            entries[name] = _rel(page)
    return entries


def test_every_public_name_has_an_api_entry():
    entries = _api_entries()
    missing = []
    for package in PACKAGES:
        mod = importlib.import_module(package)
        for name in mod.__all__:
            obj = getattr(mod, name)
            # a subpackage listed in hamjax.__all__ is documented by its own page
            target = obj.__name__ if isinstance(obj, type(sys)) else f"{package}.{name}"
            if target not in entries:
                missing.append(target)
    assert not missing, ("public names without an entry on an API page (docs/api/*.md, "
                         "'::: NAME'): " + ", ".join(missing))


def test_every_api_entry_is_a_public_name():
    stale = []
    for name, page in _api_entries().items():
        if name in PACKAGES:
            continue
        package, _, attr = name.rpartition(".")
        mod = importlib.import_module(package) if package in PACKAGES else None
        if mod is None or attr not in mod.__all__:
            stale.append(f"{page}: {name}")
    assert not stale, "API entries that name no public object: " + ", ".join(stale)


# ------------------------------------------------------------------------------- site shape
def test_every_page_is_in_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = set(re.findall(r"([\w./-]+\.md)\s*$", config.split("\nnav:", 1)[1], re.M))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == nav, (f"pages not in mkdocs.yml's nav: {sorted(pages - nav)}; nav entries "
                          f"without a page: {sorted(nav - pages)}")


def test_generated_figure_blocks_are_well_formed():
    """Measured figures are never typed into a page: they sit in blocks that
    ``python -m benchmarks.report`` fills, each opened and closed once with a known name."""
    from benchmarks.report import RENDERERS as REPORTS

    seen = set()
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        opened = re.findall(r"<!-- report:([\w-]+)(?: [\w-]+=\S+)* -->", text)
        closed = re.findall(r"<!--\s*/report:([\w-]+)\s*-->", text)
        assert opened == closed, f"{_rel(path)}: report blocks {opened} closed as {closed}"
        for name in opened:
            assert name in REPORTS, f"{_rel(path)}: unknown report block {name!r}"
            start = text.index(f"report:{name}")
            assert text.index(f"/report:{name}") > start, f"{_rel(path)}: {name} closed first"
        seen |= set(opened)
    assert seen >= set(REPORTS), f"report blocks no page holds: {sorted(set(REPORTS) - seen)}"


if __name__ == "__main__":
    # pages that need forced host devices, run in this fresh process, each in its own folder
    for arg in sys.argv[1:]:
        page = Path(arg)
        folder = Path.cwd() / page.stem
        folder.mkdir()
        os.chdir(folder)
        try:
            run_page(page)
            error = None
        except AssertionError as e:
            error = str(e)
        print(_RESULT + json.dumps([_rel(page), error]), flush=True)
