import sys

from codebase.data.synthetic.cli import main

sys.exit(main())
