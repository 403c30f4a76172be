"""`python -m DiffusionRegistrationLib` is the `diffreg` command."""
import sys

from .cli.main import main

sys.exit(main())
