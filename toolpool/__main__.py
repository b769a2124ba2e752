"""``python -m toolpool``: the same as the ``toolpool`` command."""

import sys

from .cli import main

sys.exit(main())
