"""`python -m promptkd VERB ...` is the `promptkd` command (promptkd/cli.py)."""
from .cli import console

console()
