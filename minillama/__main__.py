"""`python -m minillama`: see minillama.cli."""
import sys

try:
    from .cli import main
except KeyboardInterrupt:         # Ctrl-C while torch is still importing
    sys.exit(130)

sys.exit(main())
