"""The test suite (`python -m pytest`); a package, so that its helpers import as tests.X."""
