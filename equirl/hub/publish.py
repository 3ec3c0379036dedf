"""Saving and pushing: a repo folder written locally, or pushed to the Hub in ONE commit.

A pushed repo is always complete: ``config.json``, ``model.safetensors``, ``results.json``,
``replay.mp4`` and ``README.md`` (the model card). Missing results or video are made first
(evaluation with the default protocol, one recorded game), in the run directory itself.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from . import format as fmt
from .card import render_card
from .client import LoadError, load

RESULTS_FILE, CARD_FILE, PUSHED_FILES = fmt.RESULTS_FILE, fmt.CARD_FILE, fmt.REPO_FILES


class PushError(RuntimeError):
    """A push that cannot happen, with the reason in one line."""


def save_pretrained(agent, folder: str | os.PathLike) -> Path:
    from ..zoo.run_records import run_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fmt.write_json(folder / fmt.CONFIG_FILE, run_config(agent, getattr(agent, "training", None)))
    fmt.write_tensors(folder / fmt.WEIGHTS_FILE, agent.weights(), metadata={"format_version": str(fmt.FORMAT_VERSION)})
    return folder


def complete_repo(run_dir: Path, agent, episodes: int = 10, video_steps: int = 20_000) -> None:
    """Write results.json and replay.mp4 into ``run_dir`` where they are missing."""
    from ..evaluation.publishing import ensure_results, ensure_video

    ensure_results(agent, run_dir, episodes)
    ensure_video(agent, run_dir, video_steps)


def is_local_target(target: str) -> bool:
    """Folders are written as paths (``./zoo/a3c``, ``/data/x``, ``~/x``) or already exist;
    anything else shaped ``org/name`` is a Hugging Face repo id."""
    return target.startswith((".", "/", "~")) or Path(target).expanduser().is_dir() or "/" not in target


def push(run_dir: str | os.PathLike, target: str, *, private: bool = False, commit_message: str | None = None,
         repo_id_for_card: str | None = None) -> str:
    """Push a run directory (or any loadable repo folder) to a local folder or the Hub."""
    run_dir = Path(run_dir)
    try:
        agent = load(run_dir)
    except LoadError as err:
        raise PushError(f"cannot push {run_dir}: {err}") from None
    complete_repo(run_dir, agent)
    config = fmt.read_json(run_dir / fmt.CONFIG_FILE)
    results = fmt.read_json(run_dir / RESULTS_FILE)
    card_repo = repo_id_for_card or (target if not is_local_target(target) else str(Path(target).expanduser()))
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        for name in PUSHED_FILES[:-1]:
            shutil.copyfile(run_dir / name, staged / name)
        (staged / CARD_FILE).write_text(render_card(config, results, card_repo), encoding="utf-8")
        if is_local_target(target):
            return _push_folder(staged, Path(target).expanduser())
        return _push_hub(staged, target, private, commit_message or f"Upload {config['agent']} agent for "
                         f"{config['env']['env_id']} (equirl)")


def _push_folder(staged: Path, target: Path) -> str:
    if target.exists() and any(target.iterdir()) and not (target / fmt.CONFIG_FILE).exists():
        raise PushError(f"{target} exists and is not an equirl repo folder; refusing to write into it")
    target.mkdir(parents=True, exist_ok=True)
    for name in PUSHED_FILES:
        tmp = target / f".{name}.tmp"
        shutil.copyfile(staged / name, tmp)
        os.replace(tmp, target / name)
    return str(target)


def _push_hub(staged: Path, repo_id: str, private: bool, message: str) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not get_token():
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(staged / name)) for name in PUSHED_FILES]
        info = api.create_commit(repo_id, operations, commit_message=message)
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise PushError(f"the Hub refused the push to {repo_id} ({status}): the token cannot write there") from None
        raise PushError(f"push to {repo_id} failed: {str(err).splitlines()[0]}") from None
    return getattr(info, "commit_url", None) or repo_id


def push_agent(agent, repo_id: str, *, private: bool = False, commit_message: str | None = None) -> str:
    """``agent.push_to_hub``: save to a temporary folder, complete it, push it."""
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(agent, tmp)
        return push(tmp, repo_id, private=private, commit_message=commit_message)
