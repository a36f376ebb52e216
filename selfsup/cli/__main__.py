"""``python -m selfsup.cli``: the same as the ``selfsup`` command."""

import sys

from selfsup.cli import main

sys.exit(main())
