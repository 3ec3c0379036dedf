"""The on-disk format of a run / model repo, and the one checkpoint writer.

A folder holds ``config.json`` (plain JSON), ``model.safetensors`` (the weights needed to act)
and, for training runs, ``checkpoint.safetensors`` + ``checkpoint.json`` (optimizer state, RNG
states, counters). Nothing is pickled: tensors go to safetensors, everything else to JSON.
Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file under a real name.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"
RESULTS_FILE = "results.json"
VIDEO_FILE = "replay.mp4"
CARD_FILE = "README.md"
# What a complete repo holds, on disk, in the bundled zoo and on the Hub.
REPO_FILES = (CONFIG_FILE, WEIGHTS_FILE, RESULTS_FILE, VIDEO_FILE, CARD_FILE)


def repo_name(agent_id: str, env_id: str) -> str:
    """``a3c`` + ``ALE/Pong-v5`` -> ``a3c-ALE-Pong-v5`` (the Hub zoos' convention: '/' -> '-')."""
    return f"{agent_id}-{env_id.replace('/', '-')}"


class FormatError(ValueError):
    """A file that is not in equirl's format, with what is wrong with it."""


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); a run dir or repo is for sharing: 0644 less umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def read_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))


# ---- training checkpoints --------------------------------------------------------------

def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state_dict into tensors (for safetensors) and plain JSON values."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                plain.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in info["plain_state"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(run_dir: Path, agent, trainer_state: dict, trainer_tensors: dict | None = None) -> None:
    """Write everything needed to resume: weights, extra agent state, optimizer, RNG states, and
    what the training loop adds (env states, the replay buffer: ``trainer_tensors``).

    ``model.safetensors`` is written too, so the newest checkpoint is always loadable."""
    run_dir = Path(run_dir)
    optim_tensors, optim_info = optimizer_to_flat(agent.optimizer)
    tensors = {f"model.{k}": v for k, v in agent.weights().items()}
    tensors.update({f"extra.{k}": v for k, v in agent.extra_state().items()})
    tensors.update(optim_tensors)
    tensors.update({f"trainer.{k}": v for k, v in (trainer_tensors or {}).items()})
    tensors["rng.agent"] = agent.generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    state = {"format_version": FORMAT_VERSION, "optimizer": optim_info, "progress": agent.progress, **trainer_state}
    # The state rides in the tensor file's own metadata, so the checkpoint is ONE atomic file: a
    # kill between two writes can never pair new tensors with an old step count. checkpoint.json
    # is a readable copy, written after it.
    write_tensors(run_dir / CHECKPOINT_TENSORS, tensors, metadata={"state": json.dumps(state)})
    write_tensors(run_dir / WEIGHTS_FILE, agent.weights(), metadata={"format_version": str(FORMAT_VERSION)})
    write_json(run_dir / CHECKPOINT_STATE, state)


def load_checkpoint(run_dir: Path, agent) -> dict:
    """Restore an agent from a run's checkpoint; returns the trainer state saved with it."""
    return load_checkpoint_bytes((Path(run_dir) / CHECKPOINT_TENSORS).read_bytes(), agent)


def load_checkpoint_bytes(data: bytes, agent) -> dict:
    """:func:`load_checkpoint` from the checkpoint file's bytes (sent between training ranks)."""
    tensors = {k: v.to(agent.device) for k, v in safetensors_load(data).items()}
    header_size = int.from_bytes(data[:8], "little")
    info = json.loads(json.loads(data[8:8 + header_size])["__metadata__"]["state"])
    agent.load_weights({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    agent.load_extra_state({k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")})
    # (equirl's optimizers put loaded state back in each parameter's layout: agents/optim.py)
    agent.optimizer.load_state_dict(optimizer_from_flat(tensors, info["optimizer"]))
    agent.generator.set_state(tensors["rng.agent"].cpu())
    torch.set_rng_state(tensors["rng.torch"].cpu())
    agent.set_progress(info["progress"])
    info["tensors"] = {k[len("trainer."):]: v.cpu() for k, v in tensors.items() if k.startswith("trainer.")}
    return info
