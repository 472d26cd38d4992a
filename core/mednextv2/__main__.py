import sys

from mednextv2.cli import main

sys.exit(main())
