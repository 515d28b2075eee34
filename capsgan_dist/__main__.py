"""`python -m capsgan_dist ...` is the `capsgan` command."""

import sys

from capsgan_dist.cli import main

sys.exit(main())
