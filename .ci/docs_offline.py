"""Check that a built docs site renders its formulas offline.

``python .ci/docs_offline.py SITE``: every page's scripts and stylesheets are the site's own
(no ``http(s)://`` source), MathJax's entry and fonts are in the site, and, where headless
Chromium and ``unshare`` exist, the maths page opened from a server on loopback inside a network
namespace with no other network has its formulas typeset (MathJax's ``mjx-container`` elements,
no TeX left in the page). Exit 1 with the reason on the first failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

_REMOTE = re.compile(r"<(?:script|link)\b[^>]*(?:src|href)=\"https?://[^\"]*\"[^>]*>")


def main(site: Path) -> int:
    remote = [(p.relative_to(site), m.group(0)) for p in sorted(site.rglob("*.html"))
              for m in _REMOTE.finditer(p.read_text(encoding="utf-8"))
              if "stylesheet" in m.group(0) or "<script" in m.group(0)]
    if remote:
        print(f"docs offline: {remote[0][0]} loads {remote[0][1]}", file=sys.stderr)
        return 1
    mj = site / "assets" / "mathjax"
    fonts = list((mj / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    if not (mj / "tex-mml-chtml.js").is_file() or not fonts:
        print(f"docs offline: MathJax's entry or fonts missing under {mj}", file=sys.stderr)
        return 1
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None or shutil.which("unshare") is None:
        print("docs offline: no headless Chromium here; checked the files only")
        return 0
    script = (
        "ip link set lo up; "
        f"python3 -m http.server 8765 -b 127.0.0.1 -d {site} >/dev/null 2>&1 & srv=$!; sleep 1; "
        f"{browser} --headless --no-sandbox --disable-gpu --virtual-time-budget=20000 "
        "--dump-dom http://127.0.0.1:8765/maths/ 2>/dev/null; kill $srv")
    out = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True,
                         timeout=300)
    typeset = out.stdout.count("<mjx-container")
    raw = len(re.findall(r'class="arithmatex">\\[(\[]', out.stdout))
    if out.returncode != 0 and not out.stdout:
        print(f"docs offline: could not open the page without network "
              f"({out.stderr.strip()[:200]}); checked the files only")
        return 0
    print(f"docs offline: the maths page, network off: {typeset} formulas typeset, {raw} left "
          "as TeX")
    return 0 if typeset > 100 and raw == 0 else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
