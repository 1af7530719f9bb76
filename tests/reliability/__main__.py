"""``python -m tests.reliability``: see :mod:`tests.reliability.run`."""

import sys

from .run import main

sys.exit(main())
