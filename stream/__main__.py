"""``python -m stream`` is the ``sapiens-stream`` command."""

import sys

from stream.front.cli import main

sys.exit(main())
