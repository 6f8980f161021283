"""``python -m hamjax.cli``: the ``hamjax`` command."""

import sys

from ._main import main

sys.exit(main())
