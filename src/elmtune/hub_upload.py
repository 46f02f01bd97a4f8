"""Publish an adapter or merged directory, with its model card, to a Hugging Face Hub model repository.

:func:`check_publishable` decides what a directory is before anything touches the network: an elmtune adapter
(``adapter_config.json``, ``adapter_model.safetensors``, ``elmtune_adapter.json``) or a merged checkpoint
(``config.json``, ``merge_report.json``), in either case with a ``README.md`` card that opens with YAML metadata.
:func:`push_to_hub` then creates the repository (if needed), the branch (if one is given) and uploads the folder in
one commit. The token comes from the standard Hugging Face resolution (``HF_TOKEN``, then ``hf auth login``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmtune.errors import ElmtuneError, UsageError
from elmtune.model_cards import CARD_FILE, read_front_matter

ADAPTER = "adapter"
MERGED = "merged model"
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "elmtune_adapter.json")
_MERGED_FILES = ("config.json", "merge_report.json")
_REPO_TYPE = "model"


@dataclass(frozen=True)
class PushRequest:
    """What to upload where.

    Attributes:
        directory: The adapter or merged directory.
        repo_id: The Hub repository (``owner/name``).
        private: Create the repository private (an existing repository keeps its visibility).
        revision: The branch to commit to (created from ``main`` if missing); None for ``main``.
        commit_message: The commit's message; None for a default naming what is uploaded.
    """

    directory: Path
    repo_id: str
    private: bool = False
    revision: str | None = None
    commit_message: str | None = None


@dataclass(frozen=True)
class PushResult:
    """What was uploaded.

    Attributes:
        kind: ``adapter`` or ``merged model``.
        repo_id: The repository.
        revision: The branch committed to.
        commit_url: The commit's URL as the Hub reported it.
    """

    kind: str
    repo_id: str
    revision: str
    commit_url: str


def check_repo_id(repo_id: str) -> None:
    """Raise unless ``repo_id`` is a valid Hub repository id (huggingface_hub's own rules).

    Raises:
        UsageError: One line saying why.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UsageError(f"invalid repository id {repo_id!r}: {str(err).splitlines()[0]}") from None


def _has_files(directory: Path, names: tuple[str, ...]) -> bool:
    return all((directory / name).is_file() for name in names)


def check_publishable(directory: Path) -> str:
    """What ``directory`` holds (:data:`ADAPTER` or :data:`MERGED`), checked without network access.

    Raises:
        ElmtuneError: Not a directory, neither an elmtune adapter nor a merged model, or no card with metadata.
    """
    if not directory.is_dir():
        raise ElmtuneError(f"{directory} is not a directory")
    if _has_files(directory, _ADAPTER_FILES):
        kind = ADAPTER
    elif _has_files(directory, _MERGED_FILES):
        kind = MERGED
    else:
        raise ElmtuneError(
            f"{directory} is neither an elmtune adapter ({', '.join(_ADAPTER_FILES)}) nor a merged model "
            f"({', '.join(_MERGED_FILES)}); push a run's final/ or an `elmtune merge` output"
        )
    card = directory / CARD_FILE
    if not card.is_file():
        raise ElmtuneError(f"{directory} has no model card ({CARD_FILE}); a checkpoint's adapter has none: push final/")
    if read_front_matter(card.read_text(encoding="utf-8")) is None:
        raise ElmtuneError(f"{card} does not open with YAML metadata between '---' lines")
    return kind


def push_to_hub(request: PushRequest, *, api: Any = None) -> PushResult:
    """Upload ``request.directory`` to the Hub after checking it and the repository id.

    Args:
        request: What to upload where.
        api: A ``huggingface_hub.HfApi`` (default: a new one, with the standard token resolution).

    Returns:
        The :class:`PushResult`.

    Raises:
        UsageError: An invalid repository id.
        ElmtuneError: A directory that cannot be published, or an error from the Hub (one line).
    """
    check_repo_id(request.repo_id)
    kind = check_publishable(request.directory)
    from huggingface_hub import HfApi

    api = api if api is not None else HfApi()
    message = request.commit_message or f"Upload {kind} with elmtune"
    try:
        api.create_repo(request.repo_id, private=request.private, repo_type=_REPO_TYPE, exist_ok=True)
        if request.revision is not None:
            api.create_branch(request.repo_id, branch=request.revision, repo_type=_REPO_TYPE, exist_ok=True)
        commit = api.upload_folder(
            repo_id=request.repo_id,
            folder_path=str(request.directory),
            repo_type=_REPO_TYPE,
            revision=request.revision,
            commit_message=message,
        )
    except (OSError, ValueError) as err:  # huggingface_hub's HTTP, offline and auth errors derive from these
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ElmtuneError(f"push to {request.repo_id} failed: {first}") from None
    url = str(getattr(commit, "commit_url", commit))
    return PushResult(kind, request.repo_id, request.revision or "main", url)


__all__ = ["ADAPTER", "MERGED", "PushRequest", "PushResult", "check_publishable", "check_repo_id", "push_to_hub"]
