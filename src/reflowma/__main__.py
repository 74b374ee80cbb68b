"""``python -m reflowma`` = the ``reflowma`` command."""

import sys

from .cli import main

sys.exit(main())
