"""``python -m diffgen`` runs the command line."""

from diffgen.cli import main

main()
