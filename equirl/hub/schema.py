"""Validation of ``config.json`` before anything is built from it.

A config may come from a stranger's repo: every field is checked for presence, type and range,
and the error names the field. Nothing in it is ever executed or used to pick a class other than
by looking it up in a fixed table.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from ..agents import AGENTS
from .format import FORMAT_VERSION, FormatError

MAX_CONFIG_BYTES = 1 << 20  # a real config is ~3 KB
MAX_OBS_ELEMENTS = 4 * 1024 * 1024
MAX_ACTIONS = 1024
MAX_WIDTH = 16_384
MAX_PARAMETERS = 100_000_000  # the Atari networks have ~1.7M; refuse before allocating anything big
MAX_SEED = 2**63 - 1

# ALE vector env settings a config may carry, with their types.
ALE_FIELDS: dict[str, type] = {
    "game": str, "repeat_action_probability": float, "full_action_space": bool, "frameskip": int,
    "max_num_frames_per_episode": int, "noop_max": int, "episodic_life": bool, "use_fire_reset": bool,
    "img_height": int, "img_width": int, "grayscale": bool, "stack_num": int, "maxpool": bool,
}


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        try:
            return math.isfinite(float(value))
        except OverflowError:  # an integer with hundreds of digits
            return False
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _need(data: dict, key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise FormatError(f"config.json: missing field {where}{key}")
    value = data[key]
    if not _is(value, kind):
        raise FormatError(f"config.json: field {where}{key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def parse_config_bytes(raw: bytes) -> dict:
    if len(raw) > MAX_CONFIG_BYTES:
        raise FormatError(f"config.json is {len(raw)} bytes; more than {MAX_CONFIG_BYTES} is not a config")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise FormatError(f"config.json is not UTF-8: {err.reason} at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise FormatError(f"config.json is not valid JSON: {err.msg} (line {err.lineno})") from None
    except RecursionError:
        raise FormatError("config.json is nested too deeply") from None
    except ValueError as err:  # e.g. an integer literal longer than Python converts
        raise FormatError(f"config.json holds a value that cannot be read: {str(err)[:120]}") from None
    return validate_config(data)


def validate_config(data: Any) -> dict:
    """Check a parsed config; returns it with hyperparameters as a config dataclass under
    ``"agent_config"``. Raises :class:`FormatError` naming the first bad field."""
    if not isinstance(data, dict):
        raise FormatError(f"config.json must hold a JSON object, got {type(data).__name__}")
    version = _need(data, "format_version", int, "")
    if version > FORMAT_VERSION:
        raise FormatError(f"config.json has format_version {version}, newer than this equirl reads "
                          f"({FORMAT_VERSION}); upgrade equirl")
    if version < 1:
        raise FormatError(f"config.json: format_version must be >= 1, got {version}")
    agent_id = _need(data, "agent", str, "")
    if agent_id not in AGENTS:
        raise FormatError(f"config.json: unknown agent {agent_id!r}; known: {', '.join(AGENTS)}")
    seed = _need(data, "seed", int, "")
    if not 0 <= seed <= MAX_SEED:
        raise FormatError(f"config.json: seed must be in 0..2**63-1, got {seed}")
    config = _agent_config(agent_id, _need(data, "hyperparameters", dict, ""))
    network = _network(_need(data, "network", dict, ""))
    count = parameter_count(network, separate_value_trunk=not getattr(config, "shared_trunk", True))
    if count > MAX_PARAMETERS:
        raise FormatError(f"config.json: network has {count:,} parameters, more than the {MAX_PARAMETERS:,} "
                          f"equirl builds from a config")
    env = _env(_need(data, "env", dict, ""))
    return {**data, "agent_config": config, "network": network, "env": env}


def _agent_config(agent_id: str, values: dict):
    config_cls = AGENTS[agent_id].Config
    defaults = config_cls()
    fields = {f.name for f in dataclasses.fields(config_cls)}
    clean = {}
    for key, value in values.items():
        if key not in fields:
            raise FormatError(f"config.json: hyperparameters.{key!r} is not a {agent_id} hyperparameter")
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            if not isinstance(value, list) or not value or not all(_is(v, int) and 0 < v <= MAX_WIDTH for v in value):
                raise FormatError(f"config.json: hyperparameters.{key} must be a non-empty list of positive ints")
            value = tuple(value)
        elif not _is(value, type(default)):
            raise FormatError(f"config.json: hyperparameters.{key} must be {type(default).__name__}, "
                              f"got {type(value).__name__}")
        elif isinstance(default, float):
            value = float(value)
        clean[key] = value
    config = config_cls(**clean)
    try:
        config.validate()
    except ValueError as err:
        raise FormatError(f"config.json: hyperparameters: {err}") from None
    return config


def _network(network: dict) -> dict:
    num_actions = _need(network, "num_actions", int, "network.")
    if not 1 <= num_actions <= MAX_ACTIONS:
        raise FormatError(f"config.json: network.num_actions must be in 1..{MAX_ACTIONS}, got {num_actions}")
    trunk = _need(network, "trunk", dict, "network.")
    kind = _need(trunk, "kind", str, "network.trunk.")
    shape = _need(trunk, "obs_shape", list, "network.trunk.")
    if not shape or len(shape) > 3 or not all(_is(n, int) and n > 0 for n in shape) \
            or math.prod(shape) > MAX_OBS_ELEMENTS:
        raise FormatError(f"config.json: network.trunk.obs_shape must be 1-3 positive ints, got {shape!r}")
    if kind == "nature_cnn":
        features = _need(trunk, "features", int, "network.trunk.")
        if len(shape) != 3 or not 0 < features <= MAX_WIDTH or min(shape[1:]) < 36:
            raise FormatError(f"config.json: network.trunk: a nature_cnn needs [C, H>=36, W>=36] and "
                              f"0 < features <= {MAX_WIDTH}, got {shape} / {features}")
    elif kind == "mlp":
        hidden = _need(trunk, "hidden", list, "network.trunk.")
        if not all(_is(n, int) and 0 < n <= MAX_WIDTH for n in hidden) or not 1 <= len(hidden) <= 16:
            raise FormatError(f"config.json: network.trunk.hidden must be 1 to 16 widths in 1..{MAX_WIDTH}")
    else:
        raise FormatError(f"config.json: network.trunk.kind must be 'nature_cnn' or 'mlp', got {kind!r}")
    return network


def parameter_count(network: dict, separate_value_trunk: bool) -> int:
    """Parameters of the network a validated ``network`` block describes, counted without
    building it (heads: policy or Q logits plus a value, an upper bound for every agent)."""
    trunk = network["trunk"]
    shape = trunk["obs_shape"]
    if trunk["kind"] == "nature_cnn":
        height, width = shape[1], shape[2]
        for kernel, stride in ((8, 4), (4, 2), (3, 1)):
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
        convs = (shape[0] * 64 + 1) * 32 + (32 * 16 + 1) * 64 + (64 * 9 + 1) * 64
        features = trunk["features"]
        count, size = convs + (64 * height * width + 1) * features, features
    else:
        count, size = 0, math.prod(shape)
        for width in trunk["hidden"]:
            count, size = count + (size + 1) * width, width
    trunks = 2 if separate_value_trunk else 1
    return trunks * count + (size + 1) * (network["num_actions"] + 1)


def _env(env: dict) -> dict:
    from ..zoo.envs import EnvSpec

    env_id = _need(env, "env_id", str, "env.")
    if ":" in env_id or len(env_id) > 200:
        # Gymnasium imports the module named before ':' in 'module:Env-v0': a repo must not pick code to import.
        raise FormatError(f"config.json: env.env_id {env_id[:80]!r} is not a plain registered environment id")
    kind = _need(env, "kind", str, "env.")
    if kind not in ("atari", "gymnasium"):
        raise FormatError(f"config.json: env.kind must be 'atari' or 'gymnasium', got {kind!r}")
    _need(env, "reward_clipping", bool, "env.")
    unknown = sorted(set(env) - {f.name for f in dataclasses.fields(EnvSpec)})
    if unknown:
        raise FormatError(f"config.json: unknown env field(s): {', '.join(map(repr, unknown))}")
    if kind == "atari":
        ale = _need(env, "ale", dict, "env.")
        for key, value in ale.items():
            if key not in ALE_FIELDS:
                raise FormatError(f"config.json: env.ale.{key!r} is not an ALE setting equirl knows")
            if not _is(value, ALE_FIELDS[key]):
                raise FormatError(f"config.json: env.ale.{key} must be {ALE_FIELDS[key].__name__}")
        for key in ALE_FIELDS:
            if key not in ale:
                raise FormatError(f"config.json: missing field env.ale.{key}")
        from ale_py import roms

        if ale["game"] not in roms.get_all_rom_ids():
            raise FormatError(f"config.json: env.ale.game {ale['game'][:80]!r} is not an ALE game")
        if not 0.0 <= ale["repeat_action_probability"] <= 1.0:
            raise FormatError("config.json: env.ale.repeat_action_probability must be in [0, 1]")
    gym_kwargs = env.get("gym_kwargs", {})
    if not isinstance(gym_kwargs, dict) or not all(
            isinstance(v, (str, int, float, bool)) or v is None for v in gym_kwargs.values()):
        raise FormatError("config.json: env.gym_kwargs must map names to plain JSON scalars")
    rom = env.get("rom_md5")
    if rom is not None and not (isinstance(rom, str) and len(rom) == 32):
        raise FormatError("config.json: env.rom_md5 must be a 32-character hex string")
    return env
