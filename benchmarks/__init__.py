"""hamjax benchmarks: what users choose a library for, measured side by side as ratios.

``python -m benchmarks`` (or ``hamjax bench``) runs the quick suite on a CPU and the full suite on
a GPU and writes ``results.json``, ``results.md`` and PNG plots into ``results/<machine>/``.
Sections: :mod:`.dynamics`, :mod:`.training`, :mod:`.solvers`, :mod:`.scaling`,
:mod:`.end_to_end` (and ``capacity`` when present).
"""
