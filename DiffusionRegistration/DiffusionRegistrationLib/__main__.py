"""`python -m DiffusionRegistrationLib` is the `diffreg` command."""
from .cli.main import run

run()
