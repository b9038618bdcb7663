"""`python -m lib.admin COMMAND`: the ops CLI (lib/admin/__init__.py)."""

import sys

from lib.admin import main

sys.exit(main())
