"""The one loader: an agent from a local folder, the bundled zoo, or the Hugging Face Hub.

``load(SOURCE)`` accepts a folder path, a bundled zoo name (``a3c-Pong`` or ``equirl/a3c-Pong``),
or a Hub repo id (``org/name`` or ``org/name@revision``). Loading is offline-first: with
``HF_HUB_OFFLINE=1`` or an unreachable Hub, it reads the local Hugging Face cache without
waiting, and fails within about two seconds, saying so, if nothing is cached.

Nothing from a repo is executed: the config is validated JSON (:mod:`equirl.hub.schema`), the
weights are safetensors read with bounded headers and checked name by name against the network
the config describes, and every file must resolve inside the repo (no links out of it).
"""
from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..agents import AGENTS, Agent, ObsInfo
from ..zoo.bundled import find as find_bundled
from ..zoo.bundled import listing as bundled_listing
from . import format as fmt
from . import schema
from .format import FormatError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
MAX_WEIGHTS_BYTES = 4 << 30
MAX_HEADER_BYTES = 16 << 20
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class LoadError(RuntimeError):
    """A source that cannot be loaded, with the reason in one line."""


# ---- where a source lives ---------------------------------------------------------------

def _offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_reachable(timeout: float = 1.5) -> bool:
    """Can a TCP connection to the Hub endpoint be opened within ``timeout`` seconds?

    Run in a thread so a DNS lookup that hangs cannot hold the caller longer than that."""
    from huggingface_hub import constants

    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def bundled_names() -> list[str]:
    return [row["name"] for row in bundled_listing()]


def resolve(source: str, revision: str | None = None) -> tuple[Path, Path]:
    """``(folder, root)``: the folder holding the repo files and the folder every file must
    resolve into (for a Hub cache snapshot, the repo's cache entry, whose blobs the links
    point to)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path, path.resolve()
    bundled = find_bundled(source) if revision is None else None
    if bundled is not None:
        return bundled, bundled.resolve()
    repo_id, _, at = source.partition("@")
    revision = revision or at or None
    if not _REPO_ID.match(repo_id):
        bundled = ", ".join(bundled_names()) or "none"
        raise LoadError(f"{source!r} is not a folder, a bundled agent ({bundled}) or a Hugging Face repo id "
                        f"('org/name' or 'org/name@revision')")
    folder = _download(repo_id, revision)
    return folder, folder.parent.parent.resolve()


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .. import __version__

    offline = _offline_requested() or not hub_reachable()
    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(fmt.REPO_FILES), local_files_only=offline,
                                   library_name="equirl", library_version=__version__, etag_timeout=5)
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if _offline_requested() else "the Hugging Face Hub cannot be reached"
        raise LoadError(f"{where} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}") from None
    except RevisionNotFoundError:
        raise LoadError(f"{repo_id} has no revision {revision!r}") from None
    except GatedRepoError:
        raise LoadError(f"{repo_id} is gated: accept its terms on the Hub, and log in (HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise LoadError(f"{repo_id} does not exist on the Hugging Face Hub, or it is private and no token "
                        f"with access is set (HF_TOKEN)") from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise LoadError(f"{repo_id}: the Hub refused access ({status}); check HF_TOKEN") from None
        raise LoadError(f"{repo_id}: the Hub answered with an error: {str(err).splitlines()[0]}") from None
    except (OSError, ValueError) as err:
        raise LoadError(f"{repo_id}: download failed: {err}") from None
    return Path(folder)


def read_inside(folder: Path, name: str, root: Path, limit: int) -> Path:
    """The path of ``folder/name`` after checking it resolves inside ``root`` and is a regular
    file of at most ``limit`` bytes."""
    path = folder / name
    if not path.exists() and not path.is_symlink():
        raise FormatError(f"{name} is missing from {folder}")
    real = path.resolve()
    if not real.is_relative_to(root):
        raise FormatError(f"{name} in {folder} is a link to {real}, outside the repo; refusing to read it")
    if not real.is_file():
        raise FormatError(f"{name} in {folder} is not a regular file")
    size = real.stat().st_size
    if size > limit:
        raise FormatError(f"{name} is {size} bytes, more than the {limit} allowed")
    return real


# ---- weights ----------------------------------------------------------------------------

def read_weights_strict(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read safetensors weights and check them against ``expected`` (name -> tensor of the right
    shape and dtype). The header is parsed here first, bounded, so a hostile file is refused
    before the safetensors reader sees it."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{path.name} is not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise FormatError(f"{path.name} is not a safetensors file (header of {header_len} bytes in a "
                              f"{size}-byte file)")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
            raise FormatError(f"{path.name} is not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path.name}: safetensors header is not an object")
    header.pop("__metadata__", None)
    data_len = size - 8 - header_len
    for name, info in header.items():
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise FormatError(f"{path.name}: tensor {name!r} has dtype {dtype!r}; weights must be float "
                              f"({', '.join(SAFETENSORS_DTYPES)})")
        offsets, shape = info.get("data_offsets"), info.get("shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_len and isinstance(shape, list)
                and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise FormatError(f"{path.name}: tensor {name!r} has a bad shape or byte range")
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing:
        raise FormatError(f"{path.name}: missing tensor(s) {', '.join(map(repr, missing))}")
    if unexpected:
        raise FormatError(f"{path.name}: unexpected tensor(s) {', '.join(map(repr, unexpected[:5]))}")
    for name, reference in expected.items():
        if tuple(header[name]["shape"]) != tuple(reference.shape):
            raise FormatError(f"{path.name}: tensor {name} has shape {tuple(header[name]['shape'])}, the config's "
                              f"network needs {tuple(reference.shape)}")
    try:
        tensors = fmt.read_tensors(path)
    except Exception as err:  # noqa: BLE001 - the safetensors reader's own errors: not a tensor file after all
        raise FormatError(f"{path.name} is not a valid safetensors file: {err}") from None
    return {name: tensors[name].to(expected[name].dtype) for name in expected}


# ---- building the agent -----------------------------------------------------------------

def agent_from_config(config: dict, device: str | torch.device = "cpu") -> Agent:
    """A freshly initialised agent as a validated config describes it."""
    trunk = config["network"]["trunk"]
    obs_info = ObsInfo(tuple(trunk["obs_shape"]), "uint8" if trunk["kind"] == "nature_cnn" else "float32")
    agent = AGENTS[config["agent"]](config["agent_config"], obs_info, config["network"]["num_actions"],
                                    config["network"], device, config["seed"])
    from ..zoo.envs import EnvSpec

    agent.env_spec = EnvSpec.from_dict(config["env"])
    agent.seed = config["seed"]
    return agent


def load(source: str | os.PathLike, *, revision: str | None = None, device: str | torch.device = "cpu") -> Agent:
    """Load an agent ready to act. See the module docstring for what SOURCE may be."""
    folder, root = resolve(str(source), revision)
    try:
        config_path = read_inside(folder, fmt.CONFIG_FILE, root, schema.MAX_CONFIG_BYTES)
        config = schema.parse_config_bytes(config_path.read_bytes())
        weights_path = read_inside(folder, fmt.WEIGHTS_FILE, root, MAX_WEIGHTS_BYTES)
        # Check the weights against the network's shapes on the meta device (no memory), so a
        # config describing a big network is refused before anything big is allocated.
        with torch.device("meta"):
            expected = AGENTS[config["agent"]].build_network(
                config["agent_config"], config["network"], config["network"]["num_actions"]).state_dict()
        weights = read_weights_strict(weights_path, expected)
        agent = agent_from_config(config, device)
        agent.load_weights(weights)
    except FormatError as err:
        raise LoadError(f"{source}: {err}") from None
    agent.source_dir = folder
    agent.source = str(source)
    return agent
