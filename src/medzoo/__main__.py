"""``python -m medzoo`` runs the command line."""

import sys

from medzoo.cli import main

sys.exit(main())
