"""``python -m seghirescam.cli``: the same as the ``seghirescam`` command."""

import sys

from seghirescam.cli.app import main

sys.exit(main())
