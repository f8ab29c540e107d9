"""``python -m lolvit`` (also the entry point for ``torchrun -m lolvit``)."""
import sys

from .cli import main

sys.exit(main())
