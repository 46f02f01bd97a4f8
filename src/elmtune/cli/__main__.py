"""``python -m elmtune.cli`` (and ``accelerate launch -m elmtune.cli``) runs the ``elmtune`` command."""

from elmtune.cli.app import main

main()
