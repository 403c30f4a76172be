"""`python -m DiffusionRegistrationLib` is the `diffreg` command."""
import sys

from .cli import main

sys.exit(main())
