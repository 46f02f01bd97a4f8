"""Arguments and options shared by several commands, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

import typer

ModelArg = Annotated[
    str,
    typer.Argument(
        help="A preset (270M, 450M, 1_1B, 3B, tiny), a hub id (apple/OpenELM-270M-Instruct) or a local directory.",
        show_default=False,
    ),
]
