import sys

from codebase.data.formats.check import main

sys.exit(main())
