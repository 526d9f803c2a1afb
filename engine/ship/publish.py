"""Publish a merged model to the Hugging Face Hub with a model card written from its run.

``dry_run`` lists what would be sent and the card (engine/ship/card.py), and needs neither a token
nor a network. A real push checks the token against the Hub before it writes anything; the
card goes into the folder through a temporary file and a rename, then one ``upload_folder``
commit sends it all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.run import lineage
from engine.run.jobs import Progress, null_progress
from engine.run.rundir import RunDir
from engine.ship.card import CARD_MARK, model_card, summarize_run


@dataclass
class PushResult:
    repo_id: str
    files: list[tuple[str, int]]
    card: str
    card_written: bool
    dry_run: bool
    url: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(s for _, s in self.files)


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except Exception as e:  # HFValidationError: the message says which rule
        raise UserError(
            f"--repo-id {repo_id!r}: {e}", "use USER/NAME, e.g. my-user/leviathan-8b-v1"
        ) from None
    if repo_id.count("/") != 1:
        raise UserError(
            f"--repo-id {repo_id!r}: not USER/NAME", "use USER/NAME, e.g. my-user/leviathan-8b-v1"
        )
    return repo_id


def find_token(token: str | None = None) -> str | None:
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    return get_token()


def hub_error(e: Exception, repo_id: str) -> UserError | None:
    """A clear UserError for what the network or the Hub said, or None for a bug."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return UserError("cannot reach the Hugging Face Hub: HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE")
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            return UserError(
                "the Hugging Face Hub refused the token (401)", "hf auth login, or set a valid HF_TOKEN"
            )
        if status == 403:
            return UserError(
                f"the token may not write to {repo_id} (403)",
                "use a token with write access, or your own USER/",
            )
        return UserError(
            f"the Hugging Face Hub answered {status}: {str(e).splitlines()[0]}", "try again later"
        )
    if isinstance(e, OSError) or any(c.__module__.split(".")[0].startswith("httpx") for c in type(e).__mro__):
        return UserError(
            f"cannot reach the Hugging Face Hub ({type(e).__name__}: {e})",
            "check the network (or proxy) and try again; nothing was uploaded",
        )
    return None


def push(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    run_dir: str | Path | None = None,
    message: str | None = None,
    new_card: bool = False,
    token: str | None = None,
    progress: Progress = null_progress,
) -> PushResult:
    from engine.ship.quantize import check_model_dir

    progress(0.0, "checking the folder")
    src = check_model_dir(model_dir)
    check_repo_id(repo_id)
    info = lineage.read_info(src)
    if run_dir:
        run = lineage.find_run_dir(None, run_dir)
    elif info.get("run_dir") and RunDir(info["run_dir"]).is_run():
        run = Path(info["run_dir"])
    else:
        run = lineage.find_run_dir(info.get("checkpoint"))
    notes = [] if run else ["no run folder found: the card has no data mix, settings or metrics (--run-dir)"]
    summary = summarize_run(run)
    notes += summary.damage  # a card read from a damaged run log says so
    card = model_card(src, repo_id, summary)
    readme = src / "README.md"
    keep_theirs = readme.is_file() and CARD_MARK not in readme.read_text(errors="replace") and not new_card
    if keep_theirs:
        notes.append(
            "kept the folder's own README.md (pass --new-card to replace it with the generated card)"
        )
    files = [(n, s) for n, s in lineage.folder_files(src) if n != "README.md" or keep_theirs]
    if not keep_theirs:
        files.append(("README.md", len(card.encode())))
    files.sort()
    result = PushResult(repo_id, files, card, False, dry_run, notes=notes)
    if dry_run:
        return result

    tok = find_token(token)
    if not tok:
        raise UserError(
            "no Hugging Face token (HF_TOKEN is unset and `hf auth login` has not been run); nothing was written",
            "run `hf auth login`, or export HF_TOKEN=hf_... with write access",
        )
    from huggingface_hub import HfApi

    api = HfApi(token=tok)
    try:
        progress(0.05, "checking the token with the Hub")
        user = api.whoami()
        if not keep_theirs:
            lineage.write_text_atomic(readme, card)
            result.card_written = True
        progress(0.1, f"creating {repo_id}")
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        progress(0.15, f"uploading {lineage.human_size(result.total_bytes)}")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(src),
            repo_type="model",
            commit_message=message or f"Upload {src.name} with leviathan-cockpit",
            ignore_patterns=[".*", "**/.*"],
        )
    except Exception as e:
        err = hub_error(e, repo_id)
        if err is None:
            raise
        raise err from None
    result.url = str(url)
    lineage.record_step(run, "push", repo_id=repo_id, url=result.url, private=private, user=user.get("name"))
    progress(1.0, f"uploaded to {result.url}")
    return result
