"""``elmtune push DIR REPO_ID``: upload an adapter or merged directory, with its model card, to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def push(
    directory: Annotated[
        Path,
        typer.Argument(
            help="A run's final/ adapter or an `elmtune merge` output (with its README.md card).", show_default=False
        ),
    ],
    repo_id: Annotated[str, typer.Argument(help="The Hub model repository, owner/name.", show_default=False)],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision", help="The branch to commit to (created if missing; default main).", show_default=False
        ),
    ] = None,
    commit_message: Annotated[
        str | None, typer.Option("--commit-message", "-m", help="The commit message.", show_default=False)
    ] = None,
) -> None:
    """Upload DIRECTORY to the Hub model repository REPO_ID (created if needed) in one commit.

    The directory and the repository id are checked before anything is sent. The token comes from HF_TOKEN or
    `hf auth login`.
    """
    from elmtune.hub_upload import PushRequest, push_to_hub

    request = PushRequest(directory, repo_id, private=private, revision=revision, commit_message=commit_message)
    result = push_to_hub(request)
    typer.echo(f"pushed {result.kind} {directory} to {result.repo_id} ({result.revision}): {result.commit_url}")
