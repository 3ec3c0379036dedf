"""Hostile repos: every bad config, weights file or link is refused with equirl.LoadError whose
message names the problem, and nothing in the repo is ever unpickled or executed."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import equirl
from equirl.zoo.train import train

TENSOR = "policy.weight"  # one of the a3c CartPole network's tensors, shape (2, 64)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """config.json bytes, model.safetensors bytes and the tensors of a small valid run."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    train("a3c", "CartPole-v1", 128, seed=0, out=run, device="cpu")
    return (run / "config.json").read_bytes(), (run / "model.safetensors").read_bytes(), \
        load_file(str(run / "model.safetensors"))


@pytest.fixture(autouse=True)
def nothing_unpickled_or_executed(monkeypatch):
    """Every load in this file runs with pickle, torch.load and os.system booby-trapped: a call
    is recorded (and raises), and the test fails afterwards even if the error was swallowed."""
    calls: list[str] = []

    def trap(name):
        def record(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called while loading a hostile repo")
        return record

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
                         (os, "system"), (os, "popen")):
        monkeypatch.setattr(module, name, trap(f"{module.__name__}.{name}"))
    yield calls
    assert calls == [], f"reached while loading: {calls}"


def test_the_trap_is_armed(nothing_unpickled_or_executed, tmp_path):
    """The guard above would notice: unpickling here is caught and recorded."""
    with pytest.raises(AssertionError):
        pickle.loads(b"\x80\x04K\x01.")
    with pytest.raises(AssertionError):
        torch.load(tmp_path / "any.pt")
    with pytest.raises(AssertionError):
        os.system("true")
    assert nothing_unpickled_or_executed == ["pickle.loads", "torch.load", "os.system"]
    nothing_unpickled_or_executed.clear()


def make_repo(folder: Path, config: bytes, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(config)
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def refused(source) -> str:
    """Load ``source``; it must fail with LoadError (any other exception fails the test) and a
    one-line message. Returns the message."""
    with pytest.raises(equirl.LoadError) as info:
        equirl.load(source)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_the_unmodified_repo_loads(good, tmp_path):
    """The control: everything below fails only because of what it changes."""
    config, weights, tensors = good
    agent = equirl.load(make_repo(tmp_path / "repo", config, weights))
    assert all(torch.equal(agent.weights()[k], v) for k, v in tensors.items())


# ---- weights ------------------------------------------------------------------------------------

def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def split(weights: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", weights[:8])
    return json.loads(weights[8:8 + n]), weights[8 + n:]


def saved(tensors: dict, tmp_path: Path) -> bytes:
    path = tmp_path / "tensors.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path.read_bytes()


class Harmless:
    def __init__(self):
        self.value = 42


def weights_case(name: str, good, tmp_path: Path) -> bytes:
    _, weights, tensors = good
    header, data = split(weights)
    if name == "random bytes":
        return random.Random(0).randbytes(4096)
    if name == "empty file":
        return b""
    if name == "pickle":
        return pickle.dumps({"policy.weight": [[0.0] * 64] * 2, "obj": Harmless()})
    if name == "torch zip":
        path = tmp_path / "state.pt"
        torch.save(tensors, path)
        return path.read_bytes()
    if name == "huge header length":
        return struct.pack("<Q", 2 ** 60) + b"{}" + data
    if name == "header length past the end":
        return struct.pack("<Q", len(weights)) + weights[8:]
    if name == "header not JSON":
        return struct.pack("<Q", 8) + b"\xff\xfe{\x00[ ]}" + data
    if name == "header not an object":
        return safetensors_bytes([1, 2, 3], data)
    if name == "header nested deeply":
        return struct.pack("<Q", 100_000) + b"[" * 100_000 + data
    if name == "offsets past the end":
        header[TENSOR]["data_offsets"] = [header[TENSOR]["data_offsets"][0], len(data) + 4096]
        return safetensors_bytes(header, data)
    if name == "offsets huge":
        header[TENSOR]["data_offsets"] = [0, 2 ** 62]
        return safetensors_bytes(header, data)
    if name == "offsets disagree with shape":
        start, end = header[TENSOR]["data_offsets"]
        header[TENSOR]["data_offsets"] = [start, end - 4]
        return safetensors_bytes(header, data)
    if name == "dtype as a list":
        header[TENSOR]["dtype"] = ["F32"]
        return safetensors_bytes(header, data)
    if name == "dtype as an object":
        header[TENSOR]["dtype"] = {"__class__": "os.system"}
        return safetensors_bytes(header, data)
    raise KeyError(name)


@pytest.mark.parametrize("name, expected", [
    ("random bytes", "safetensors"),
    ("empty file", "safetensors"),
    ("pickle", "safetensors"),
    ("torch zip", "safetensors"),
    ("huge header length", "header"),
    ("header length past the end", "header"),
    ("header not JSON", "header"),
    ("header not an object", "header"),
    ("header nested deeply", "header"),
    ("offsets past the end", TENSOR),
    ("offsets huge", TENSOR),
    ("offsets disagree with shape", "safetensors"),
    ("dtype as a list", TENSOR),
    ("dtype as an object", TENSOR),
])
def test_broken_weights_file_is_refused(good, tmp_path, name, expected):
    config = good[0]
    message = refused(make_repo(tmp_path / "repo", config, weights_case(name, good, tmp_path)))
    assert "model.safetensors" in message
    assert expected in message


def test_tensor_with_the_wrong_shape_is_named(good, tmp_path):
    config, _, tensors = good
    bad = dict(tensors, **{TENSOR: torch.zeros(3, 64)})
    message = refused(make_repo(tmp_path / "repo", config, saved(bad, tmp_path)))
    assert TENSOR in message
    assert "(3, 64)" in message and "(2, 64)" in message


def test_missing_tensor_is_named(good, tmp_path):
    config, _, tensors = good
    bad = {k: v for k, v in tensors.items() if k != "value.bias"}
    message = refused(make_repo(tmp_path / "repo", config, saved(bad, tmp_path)))
    assert "missing" in message and "value.bias" in message


def test_extra_tensor_is_named(good, tmp_path):
    config, _, tensors = good
    bad = dict(tensors, **{"backdoor.weight": torch.zeros(2, 2)})
    message = refused(make_repo(tmp_path / "repo", config, saved(bad, tmp_path)))
    assert "unexpected" in message and "backdoor.weight" in message


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_non_float_tensor_is_refused(good, tmp_path, dtype):
    config, _, tensors = good
    bad = dict(tensors, **{TENSOR: tensors[TENSOR].to(dtype)})
    message = refused(make_repo(tmp_path / "repo", config, saved(bad, tmp_path)))
    assert TENSOR in message and "float" in message


def test_weights_file_over_the_limit_is_refused_unread(good, tmp_path):
    config = good[0]
    repo = make_repo(tmp_path / "repo", config, b"")
    with open(repo / "model.safetensors", "wb") as f:
        f.truncate(5 << 30)  # sparse: takes no disk space
    message = refused(repo)
    assert "model.safetensors" in message and "bytes" in message


# ---- config.json ----------------------------------------------------------------------------------

def set_path(config: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        config = config[key]
    config[last] = value


def delete_path(config: dict, path: str) -> None:
    *parents, last = path.split(".")
    for key in parents:
        config = config[key]
    del config[last]


def config_repo(good, tmp_path: Path, change) -> Path:
    config_bytes, weights, _ = good
    config = copy.deepcopy(json.loads(config_bytes))
    change(config)
    return make_repo(tmp_path / "repo", json.dumps(config).encode(), weights)


SMUGGLED = [
    # (field, value, what the message must name)
    ("agent", "os.system", "agent"),
    ("agent", "equirl.agents.a3c.A3C", "agent"),
    ("agent", "!!python/object/apply:os.system", "agent"),
    ("hyperparameters.tau", {"__class__": "os.system"}, "tau"),
    ("hyperparameters.tau", [0.1], "tau"),
    ("hyperparameters.tau", "!!python/object/apply:os.system ['echo pwned']", "tau"),
    ("hyperparameters.hidden", {"py/object": "os.system"}, "hidden"),
    ("hyperparameters.reference", "!!python/object/new:os.system", "reference"),
    ("hyperparameters.__class__", "os.system", "__class__"),
    ("hyperparameters.__init__", {"args": ["echo pwned"]}, "__init__"),
    ("network.trunk.kind", "os.system", "kind"),
    ("network", "!!python/object:equirl.agents.networks.MLP", "network"),
    ("env", ["os.system", "echo pwned"], "env"),
    ("env.__reduce__", "os.system", "__reduce__"),
    ("env.gym_kwargs", {"render_mode": {"__class__": "os.system"}}, "gym_kwargs"),
]


@pytest.mark.parametrize("field, value, named", SMUGGLED, ids=[f"{f}={v!r}"[:60] for f, v, _ in SMUGGLED])
def test_config_smuggling_objects_is_rejected(good, tmp_path, field, value, named):
    message = refused(config_repo(good, tmp_path, lambda c: set_path(c, field, value)))
    assert "config.json" in message and named in message


def test_unknown_top_level_keys_are_ignored_as_data(good, tmp_path):
    """Keys equirl does not read change nothing: no class is looked up from them."""
    _, _, tensors = good

    def change(config):
        config["__class__"] = "os.system"
        config["py/reduce"] = [{"py/function": "os.system"}, ["echo pwned"]]
        config["training"] = {"command": "!!python/object/apply:os.system ['echo pwned']"}

    agent = equirl.load(config_repo(good, tmp_path, change))
    assert type(agent) is equirl.A3C
    assert all(torch.equal(agent.weights()[k], v) for k, v in tensors.items())


@pytest.mark.parametrize("text", ["!!python/object/apply:os.system ['echo pwned']", "os:system-v0",
                                  "equirl.cli:main-v0"])
def test_env_id_naming_a_module_is_refused(good, tmp_path, text):
    """Gymnasium imports the module before ':' in an id; a repo must not choose code to import."""
    with pytest.raises(equirl.LoadError, match="env.env_id .* is not a plain registered environment id"):
        equirl.load(config_repo(good, tmp_path, lambda c: set_path(c, "env.env_id", text)))


BAD_VALUES = [
    # wrong types
    ("format_version", "1", "format_version"),
    ("format_version", 1.0, "format_version"),
    ("format_version", True, "format_version"),
    ("seed", 1.5, "seed"),
    ("seed", "0", "seed"),
    ("seed", True, "seed"),
    ("hyperparameters.tau", "0.1", "tau"),
    ("hyperparameters.gamma", None, "gamma"),
    ("hyperparameters.n_steps", 8.5, "n_steps"),
    ("hyperparameters.lr_decay", "yes", "lr_decay"),
    ("network.num_actions", 2.0, "num_actions"),
    ("network.trunk.obs_shape", "4", "obs_shape"),
    ("env.reward_clipping", "no", "reward_clipping"),
    ("env.env_id", 7, "env_id"),
    # out of range
    ("format_version", 0, "format_version"),
    ("hyperparameters.tau", -1, "tau"),
    ("hyperparameters.tau", 0, "tau"),
    ("hyperparameters.gamma", 2, "gamma"),
    ("hyperparameters.lr", -0.001, "lr"),
    ("hyperparameters.optimizer", "sgd", "optimizer"),
    ("network.num_actions", 0, "num_actions"),
    ("network.num_actions", 10 ** 6, "num_actions"),
    ("network.trunk.obs_shape", [0], "obs_shape"),
    ("network.trunk.obs_shape", [-4], "obs_shape"),
    ("network.trunk.obs_shape", [], "obs_shape"),
    ("network.trunk.obs_shape", [100000, 100000, 100000], "obs_shape"),
    ("network.trunk.hidden", [0], "hidden"),
    ("network.trunk.hidden", [64] * 17, "hidden"),
    ("env.kind", "shell", "kind"),
    ("seed", 2 ** 64, "seed"),
    ("seed", -(2 ** 70), "seed"),
]


@pytest.mark.parametrize("field, value, named", BAD_VALUES, ids=[f"{f}={v!r}"[:60] for f, v, _ in BAD_VALUES])
def test_config_with_a_bad_value_is_rejected_naming_the_field(good, tmp_path, field, value, named):
    message = refused(config_repo(good, tmp_path, lambda c: set_path(c, field, value)))
    assert "config.json" in message and named in message


@pytest.mark.parametrize("field", ["format_version", "agent", "seed", "hyperparameters", "network", "env",
                                   "network.num_actions", "network.trunk", "network.trunk.obs_shape", "env.kind"])
def test_config_missing_a_key_is_rejected_naming_it(good, tmp_path, field):
    message = refused(config_repo(good, tmp_path, lambda c: delete_path(c, field)))
    assert "missing" in message and field.rsplit(".", 1)[-1] in message


def test_newer_format_version_says_upgrade(good, tmp_path):
    message = refused(config_repo(good, tmp_path, lambda c: set_path(c, "format_version", 99)))
    assert "99" in message and "upgrade" in message


def raw_config_repo(good, tmp_path: Path, raw: bytes) -> Path:
    return make_repo(tmp_path / "repo", raw, good[1])


@pytest.mark.parametrize("name, expected", [
    ("latin-1 bytes", "UTF-8"),
    ("invalid JSON", "JSON"),
    ("truncated JSON", "JSON"),
    ("NaN value", "tau"),
    ("Infinity value", "tau"),
    ("nested lists", "nested"),
    ("nested objects", "nested"),
    ("a list, not an object", "object"),
    ("empty file", "JSON"),
])
def test_unreadable_config_is_rejected(good, tmp_path, name, expected):
    text = good[0].decode()
    raw = {
        "latin-1 bytes": text.replace('"CartPole-v1"', '"CartP\u00f6le-v1"').encode("latin-1"),
        "invalid JSON": b"{'agent': 'a3c'}",
        "truncated JSON": good[0][: len(good[0]) // 2],
        "NaN value": text.replace('"tau": 0.001', '"tau": NaN').encode(),
        "Infinity value": text.replace('"tau": 0.001', '"tau": Infinity').encode(),
        "nested lists": b"[" * 100_000,
        "nested objects": b'{"a": ' * 100_000,
        "a list, not an object": b"[]",
        "empty file": b"",
    }[name]
    assert raw != good[0]
    message = refused(raw_config_repo(good, tmp_path, raw))
    assert "config.json" in message and expected in message


def test_oversize_config_is_rejected(good, tmp_path):
    raw = good[0].rstrip() + b" " * (1 << 20) + b"\n"  # still valid JSON, just too big to be a config
    message = refused(raw_config_repo(good, tmp_path, raw))
    assert "config.json" in message and "bytes" in message


def test_config_describing_a_gigantic_network_is_refused_before_allocating(good, tmp_path):
    """Every field is in range, but together they describe ~69 billion parameters (275 GB).
    Run in a child with 3 GB of address space so a regression cannot take this machine's
    memory."""
    def change(config):
        config["network"]["trunk"]["obs_shape"] = [4 * 1024 * 1024]
        config["network"]["trunk"]["hidden"] = [16384]
    repo = config_repo(good, tmp_path, change)
    code = r'''
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
import equirl
try:
    equirl.load(sys.argv[1])
    print(json.dumps({"type": None}))
except BaseException as err:
    print(json.dumps({"type": type(err).__name__, "error": str(err)[:500]}))
'''
    proc = subprocess.run([sys.executable, "-c", code, str(repo)], check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["type"] == "LoadError", out
    assert "network" in out["error"] or "parameters" in out["error"], out


# ---- links and path traversal ---------------------------------------------------------------------

def test_local_config_linking_to_etc_passwd_is_refused(good, tmp_path):
    repo = make_repo(tmp_path / "repo", good[0], good[1])
    (repo / "config.json").unlink()
    os.symlink("/etc/passwd", repo / "config.json")
    message = refused(repo)
    assert "config.json" in message and "outside" in message


def test_local_weights_linking_to_a_valid_file_elsewhere_are_refused(good, tmp_path):
    """The target is a perfectly good weights file: the link alone is the reason to refuse."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.safetensors").write_bytes(good[1])
    repo = make_repo(tmp_path / "repo", good[0], b"")
    (repo / "model.safetensors").unlink()
    os.symlink("../elsewhere/model.safetensors", repo / "model.safetensors")
    message = refused(repo)
    assert "model.safetensors" in message and "outside" in message
    # The same bytes as a regular file inside the folder load.
    (repo / "model.safetensors").unlink()
    (repo / "model.safetensors").write_bytes(good[1])
    assert type(equirl.load(repo)) is equirl.A3C


def test_weights_that_are_a_folder_are_refused(good, tmp_path):
    repo = make_repo(tmp_path / "repo", good[0], b"")
    (repo / "model.safetensors").unlink()
    (repo / "model.safetensors").mkdir()
    message = refused(repo)
    assert "model.safetensors" in message and "regular file" in message


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def hf_snapshot(cache: Path, repo: str, config: bytes, weights_link: str | None, weights: bytes) -> Path:
    """A repo in the Hugging Face cache layout; ``weights_link`` overrides where the snapshot's
    model.safetensors link points."""
    storage = cache / f"models--testorg--{repo}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = storage / "snapshots" / commit
    for folder in (storage / "blobs", storage / "refs", snapshot):
        folder.mkdir(parents=True)
    for name, data in (("config.json", config), ("model.safetensors", weights)):
        blob = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else git_blob_sha1(data)
        (storage / "blobs" / blob).write_bytes(data)
        os.symlink(weights_link if weights_link and name == "model.safetensors" else f"../../blobs/{blob}",
                   snapshot / name)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache


def test_hf_snapshot_control_loads(good, hf_cache):
    snapshot = hf_snapshot(hf_cache, "fine", good[0], None, good[1])
    agent = equirl.load("testorg/fine")
    assert Path(agent.source_dir).resolve() == snapshot.resolve()


def test_hf_snapshot_link_out_of_the_cache_is_refused(good, hf_cache):
    """snapshots/<commit>/model.safetensors -> ../../../outside: a valid file, but outside the repo."""
    (hf_cache / "outside").write_bytes(good[1])
    hf_snapshot(hf_cache, "traversal", good[0], "../../../outside", good[1])
    message = refused("testorg/traversal")
    assert "model.safetensors" in message and "outside" in message


def test_hf_snapshot_link_into_another_repo_is_refused(good, hf_cache):
    hf_snapshot(hf_cache, "victim", good[0], None, good[1])
    blob = hashlib.sha256(good[1]).hexdigest()
    hf_snapshot(hf_cache, "thief", good[0], f"../../../models--testorg--victim/blobs/{blob}", b"unused")
    message = refused("testorg/thief")
    assert "model.safetensors" in message and "outside" in message


def test_hf_snapshot_link_to_an_absolute_path_is_refused(good, hf_cache):
    hf_snapshot(hf_cache, "absolute", good[0], "/etc/passwd", good[1])
    message = refused("testorg/absolute")
    assert "model.safetensors" in message and "outside" in message
