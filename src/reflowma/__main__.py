"""``python -m reflowma`` = the ``reflowma`` command."""

import sys

from reflowma.cli import main

sys.exit(main())
