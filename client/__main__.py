"""``python -m client``: the command line in client/cli.py."""

import sys

from client.cli import main

sys.exit(main())
