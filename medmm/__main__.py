"""``python -m medmm`` (used with ``torchrun -m medmm run ...``)."""

import sys

from medmm.cli import main

sys.exit(main())
