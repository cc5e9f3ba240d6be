"""`python -m mesowriter ...` runs the command line."""

from mesowriter.cli import main

raise SystemExit(main())
