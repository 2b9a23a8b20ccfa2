"""``python -m scaffold.cli``: the command line."""

from scaffold.cli import main

main()
