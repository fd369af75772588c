"""``python -m diffuspec``: the ``diffuspec`` command."""

import sys

from .cli import main

sys.exit(main())
