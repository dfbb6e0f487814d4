import sys

from qsync.cli.main import main

sys.exit(main())
