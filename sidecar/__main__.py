import sys

from sidecar.cli import main

# The guard matters: `serve --workers N` spawns processes that import this module again.
if __name__ == "__main__":
    sys.exit(main())
