import sys

from rda_ext.cli import main

sys.exit(main())
