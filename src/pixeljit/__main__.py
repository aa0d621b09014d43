import sys

from pixeljit.cli import main

sys.exit(main())
