"""What a pushed repo needs from evaluation: results.json and replay.mp4, made when missing."""
from __future__ import annotations

from pathlib import Path

from ..hub import format as fmt
from .evaluate import evaluate, write_results_json
from .video import record


def ensure_results(agent, folder: Path, episodes: int) -> Path:
    """Evaluate with the default protocol (greedy, env-id defaults) unless results.json exists."""
    path = Path(folder) / fmt.RESULTS_FILE
    if not path.exists():
        write_results_json(path, evaluate(agent, None, episodes=episodes), agent, source=str(folder))
    return path


def ensure_video(agent, folder: Path, max_steps: int) -> Path:
    """Record one game unless replay.mp4 exists; a failed encoding raises (never an empty file)."""
    path = Path(folder) / fmt.VIDEO_FILE
    if not path.exists():
        record(agent, None, path, max_steps=max_steps)
    return path
