"""``python -m attnzoo ...`` is the ``attnzoo`` command."""
import sys

from .cli import main

sys.exit(main())
