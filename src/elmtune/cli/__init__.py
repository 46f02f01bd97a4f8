"""Command-line interface (Typer). Commands parse options and call one library function each."""
