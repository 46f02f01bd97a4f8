"""``elmtune push DIR REPO_ID``: the exact Hub calls (patched: the Hub is unreachable here) and the one-line refusals
that come before any network access."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from typer.testing import CliRunner

from elmtune.cli.app import app

runner = CliRunner()
CARD = "---\nbase_model: tiny\nlibrary_name: peft\n---\n\n# card\n"


class HubCalls:
    """Records the patched ``HfApi`` calls; any other network access fails the test."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def recorder(self, name: str, result: Any = None):
        def call(api: huggingface_hub.HfApi, *args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return result

        return call


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> HubCalls:
    calls = HubCalls()
    commit = huggingface_hub.CommitInfo(
        commit_url="https://huggingface.co/me/repo/commit/abc",
        commit_message="m",
        commit_description="",
        oid="abc",
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", calls.recorder("create_repo"))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", calls.recorder("create_branch"))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", calls.recorder("upload_folder", commit))

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an unpatched Hub call tried to reach the network")

    for module in (huggingface_hub.hf_api, huggingface_hub.utils, huggingface_hub.utils._http):
        monkeypatch.setattr(module, "get_session", no_network)
    monkeypatch.setattr(huggingface_hub.hf_api, "http_backoff", no_network)
    return calls


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    """The files of an elmtune adapter directory with its card (their content is not read by push)."""
    out = tmp_path / "final"
    out.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "elmtune_adapter.json"):
        (out / name).write_text("{}")
    (out / "README.md").write_text(CARD)
    return out


@pytest.fixture
def merged_dir(tmp_path: Path) -> Path:
    out = tmp_path / "merged"
    out.mkdir()
    for name in ("config.json", "merge_report.json", "model.safetensors"):
        (out / name).write_text("{}")
    (out / "README.md").write_text(CARD.replace("peft", "transformers"))
    return out


def test_push_adapter_creates_the_repo_then_uploads_the_folder(hub: HubCalls, adapter_dir: Path) -> None:
    result = runner.invoke(app, ["push", str(adapter_dir), "me/repo", "--private"])
    assert result.exit_code == 0, result.output
    assert hub.calls == [
        ("create_repo", ("me/repo",), {"private": True, "repo_type": "model", "exist_ok": True}),
        (
            "upload_folder",
            (),
            {
                "repo_id": "me/repo",
                "folder_path": str(adapter_dir),
                "repo_type": "model",
                "revision": None,
                "commit_message": "Upload adapter with elmtune",
            },
        ),
    ]
    assert "pushed adapter" in result.output and "https://huggingface.co/me/repo/commit/abc" in result.output


def test_push_merged_to_a_branch_with_a_message(hub: HubCalls, merged_dir: Path) -> None:
    args = ["push", str(merged_dir), "me/merged", "--revision", "v1", "--commit-message", "first merge"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert hub.calls == [
        ("create_repo", ("me/merged",), {"private": False, "repo_type": "model", "exist_ok": True}),
        ("create_branch", ("me/merged",), {"branch": "v1", "repo_type": "model", "exist_ok": True}),
        (
            "upload_folder",
            (),
            {
                "repo_id": "me/merged",
                "folder_path": str(merged_dir),
                "repo_type": "model",
                "revision": "v1",
                "commit_message": "first merge",
            },
        ),
    ]
    assert "pushed merged model" in result.output


def test_hub_errors_are_one_line(run_main, monkeypatch: pytest.MonkeyPatch, adapter_dir: Path) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise huggingface_hub.errors.OfflineModeIsEnabled(
            "Cannot reach https://huggingface.co: offline mode is enabled"
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    code, line = run_main(["push", str(adapter_dir), "me/repo"])
    assert code == 1
    assert line == "error: push to me/repo failed: Cannot reach https://huggingface.co: offline mode is enabled"


@pytest.mark.parametrize(
    ("damage", "repo_id", "code", "message"),
    [
        ("none", "bad id", 2, "invalid repository id 'bad id'"),
        ("none", "a/b/c", 2, "invalid repository id 'a/b/c'"),
        ("no card", "me/repo", 1, "has no model card (README.md)"),
        ("card without metadata", "me/repo", 1, "does not open with YAML metadata"),
        ("not an adapter", "me/repo", 1, "is neither an elmtune adapter"),
        ("missing", "me/repo", 1, "is not a directory"),
    ],
)
def test_bad_inputs_are_refused_before_any_network_call(
    run_main, hub: HubCalls, adapter_dir: Path, damage: str, repo_id: str, code: int, message: str
) -> None:
    target = adapter_dir
    if damage == "no card":
        (adapter_dir / "README.md").unlink()
    elif damage == "card without metadata":
        (adapter_dir / "README.md").write_text("# just a title\n")
    elif damage == "not an adapter":
        (adapter_dir / "elmtune_adapter.json").unlink()  # a plain peft adapter is not elmtune's
    elif damage == "missing":
        target = adapter_dir / "absent"
    exit_code, line = run_main(["push", str(target), repo_id])
    assert exit_code == code and message in line, line
    assert hub.calls == []
