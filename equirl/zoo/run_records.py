"""What a run directory records besides its weights and checkpoints: the facts in config.json
(versions, code revision, hardware, wall time), metrics.jsonl with its TensorBoard twin, and
the trimming of both when a run resumes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..agents import Agent
from ..hub import format as fmt
from .rollout import Episode


def package_versions() -> dict[str, str]:
    import ale_py
    import gymnasium
    import safetensors

    return {"equirl": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "gymnasium": gymnasium.__version__, "ale_py": ale_py.__version__,
            "safetensors": safetensors.__version__}


def code_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, check=False,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def config_to_json(config) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def run_config(agent: Agent, training: dict | None = None) -> dict:
    """The config.json of a run or model repo: everything needed to rebuild the agent and its env."""
    return {
        "format_version": fmt.FORMAT_VERSION, "library": "equirl", "agent": agent.agent_id,
        "hyperparameters": config_to_json(agent.config), "network": agent.network_spec,
        "env": agent.env_spec.to_dict(), "seed": agent.seed, "training": training or {},
        "versions": package_versions(), "code_revision": code_revision(),
    }


class MetricsLog:
    """metrics.jsonl + TensorBoard; both optional (no run dir: nothing is written)."""

    def __init__(self, run_dir: Path | None):
        # Line-buffered: every record is on disk as soon as it is written (a crash loses none).
        # Kept open for the run's life, closed by close().
        self.file = (open(run_dir / "metrics.jsonl", "a", encoding="utf-8", buffering=1)  # noqa: SIM115
                     if run_dir else None)
        self.tb = None
        if run_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def episode(self, step: int, episode: Episode) -> None:
        if self.file:
            self.file.write(json.dumps({"kind": "episode", "step": step, "return": episode.score,
                                        "length": episode.length}) + "\n")
            self.tb.add_scalar("episode/return", episode.score, step)
            self.tb.add_scalar("episode/length", episode.length, step)

    def record(self, entry: dict) -> None:
        if self.file:
            self.file.write(json.dumps(entry) + "\n")

    def update(self, step: int, metrics: dict[str, float], sps: float) -> None:
        if self.file:
            self.file.write(json.dumps({"kind": "update", "step": step, "sps": round(sps, 1), **metrics}) + "\n")
            for name, value in metrics.items():
                self.tb.add_scalar(f"train/{name}", value, step)
            self.tb.add_scalar("train/sps", sps, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.tb.close()


def recorded_wall(run_dir: Path | None) -> float:
    """The wall time config.json holds (0 if none): for checkpoints older than the field."""
    try:
        return float(fmt.read_json(run_dir / fmt.CONFIG_FILE).get("training", {}).get("wall_seconds", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def drop_metrics_after(path: Path, steps: int) -> None:
    """Keep the metrics of the steps the checkpoint holds: lines written after it (before a crash)
    describe steps that will be run again, and a line cut by the crash is not JSON."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= steps:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    fmt.write_text(path, "".join(line + "\n" for line in kept))


def record_flush_state(run_dir: Path, step: int, state: str) -> None:
    """Add where subnormals are flushed from ``step`` on (see :mod:`equirl.zoo.numerics`) to the
    run's ``training.flush_denormal``, a map from the step each state began at to the state.
    Runs started before the field existed never flushed."""
    config = fmt.read_json(run_dir / fmt.CONFIG_FILE)
    history = config.setdefault("training", {}).setdefault("flush_denormal", {"0": "off"})
    if history[max(history, key=int)] != state:
        history[str(step)] = state
        fmt.write_json(run_dir / fmt.CONFIG_FILE, config)


def hardware_description(device: torch.device) -> str:
    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {cpu}"
    return cpu


def record_training_facts(run_dir: Path, steps: int, wall_seconds: float, device: torch.device,
                           processes: int = 1, timed_from: int = 0) -> None:
    """Steps done, wall time (summed over resumes) and hardware, for the model card."""
    config = fmt.read_json(run_dir / fmt.CONFIG_FILE)
    training = config.setdefault("training", {})
    training["steps_done"] = steps
    training["wall_seconds"] = round(wall_seconds, 1)
    if timed_from:
        training["wall_seconds_from_step"] = timed_from
    training["hardware"] = hardware_description(device)
    if processes > 1:
        training["hardware"] += f", {processes} processes"
    fmt.write_json(run_dir / fmt.CONFIG_FILE, config)
