"""``python -m scaffold``: the command line, as the ``scaffold`` script (and ``python -m scaffold.cli``)
runs it; what launchers such as torchrun start (``torchrun ... -m scaffold test PROJECT``)."""

from scaffold.cli import main

main()
