"""The ``hamjax`` command: ``train``, ``eval``, ``analyze``, ``bench``.

``hamjax train`` with no arguments trains a dense HAM classifier on the scikit-learn digits
(bundled: nothing is downloaded), shows a progress bar, prints the test accuracy and writes a
run folder: ``metrics.json``, ``history.csv``, ``checkpoint.eqx``, ``config.json`` and pictures.
"""

from ._main import main, train_config
from ._parser import UsageError

__all__ = ["main", "train_config", "UsageError"]
