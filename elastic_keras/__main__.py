"""`python -m elastic_keras`: the command line (see elastic_keras.cli)."""

import sys

from .cli import main

sys.exit(main())
