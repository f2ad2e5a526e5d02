"""python -m client: the corruption-detect CLI."""

import sys

from client.cli import main

sys.exit(main())
