"""`python -m recon3d`: the same as the `recon3d` command."""

import sys

from recon3d.cli.main import main

sys.exit(main())
