"""``python -m ml_system.cli`` runs the ``mlsys`` command."""

from ml_system.cli.main import app

app(prog_name="mlsys")
