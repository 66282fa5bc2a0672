import sys

from tndsl.cli import main

sys.exit(main())
