"""``python -m alignnet ...`` is the ``alignnet`` command (used by torchrun and by the service launcher)."""

import sys

from alignnet.cli.main import main

sys.exit(main())
