"""``python -m edgesmith`` (and ``torchrun -m edgesmith``) runs the CLI."""

import sys

from edgesmith.cli import main

sys.exit(main())
