"""fedsim: federated-learning simulation whose honest-but-curious server attacks client updates.

Importing this package is cheap (no Flower, no torch); see `fedsim.cli` for the command line.
"""

__version__ = "0.1.0"  # the only place the version is written (pyproject.toml reads it)
