"""`python -m avportal`: the `avportal` command."""

import sys

from avportal.cli import main

sys.exit(main())
