"""`python -m reflectevo.cli ...`: the same app as the `reflectevo` entry point."""

from reflectevo.cli import app

app()
