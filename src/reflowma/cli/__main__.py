"""``python -m reflowma.cli`` = the ``reflowma`` command."""

import sys

from reflowma.cli import main

sys.exit(main())
