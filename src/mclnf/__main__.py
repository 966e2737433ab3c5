import sys

from mclnf.cli import main

sys.exit(main())
