import sys

from localrank.cli import main

sys.exit(main())
