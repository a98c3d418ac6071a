"""`python -m elastic_keras`: the command line (see elastic_keras.cli)."""

import sys

from elastic_keras.cli import main

sys.exit(main())
