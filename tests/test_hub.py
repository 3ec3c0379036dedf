"""The Hub: push to a folder and load back in a fresh process, load from the real Hugging Face
cache layout offline, fail fast and clearly when nothing is cached, push to the Hub in exactly
one commit (intercepted, no network), and the agents' from_pretrained / save_pretrained /
push_to_hub / make_env. One opt-in test pushes for real when HF_TOKEN is set."""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import equirl
from equirl.hub import publish
from equirl.zoo.train import train

ENV_ID = "CartPole-v1"
REPO_FILES = {"config.json", "model.safetensors", "results.json", "replay.mp4", "README.md"}
RESULTS = {"summary": {"mean": 1.0, "std": 0.5, "episodes": 3, "median": 1.0, "min": 0.5, "max": 1.5},
           "protocol": {"episodes": 3}}
VIDEO = b"\x00\x00\x00\x18ftypmp42 not really a video, just bytes"
COMMIT = hashlib.sha1(b"equirl test snapshot").hexdigest()  # any 40-hex commit id


def weights_digest(weights) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# A fresh interpreter that loads SOURCES (argv[2:]) and prints, per source, the weights digest,
# the greedy actions on the observations in argv[1] and where the files were read from.
LOADER = "import hashlib, json, sys\nimport numpy as np\nimport equirl\n" + inspect.getsource(weights_digest) + r'''
obs = np.asarray(json.loads(sys.argv[1]), dtype=np.float32)
out = {}
for source in sys.argv[2:]:
    try:
        agent = equirl.load(source)
    except equirl.LoadError as err:
        out[source] = {"error": str(err)}
        continue
    out[source] = {"weights": weights_digest(agent.weights()), "agent": agent.agent_id,
                   "actions": agent.act(obs, greedy=True).tolist(), "source_dir": str(agent.source_dir)}
print(json.dumps(out))
'''


def observations(n: int = 64) -> np.ndarray:
    return np.random.default_rng(123).normal(0.0, 1.0, size=(n, 4)).astype(np.float32)


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_CACHE",
                        "HF_HOME", "HF_ENDPOINT")}
    env.update(extra)
    return env


def load_in_fresh_process(sources: list[str], cwd: Path, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps(observations().tolist()), *sources],
                          cwd=cwd, env=env, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_results_and_video(folder: Path) -> None:
    (folder / "results.json").write_text(json.dumps(RESULTS))
    (folder / "replay.mp4").write_bytes(VIDEO)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n"), card[:200]
    head, sep, _ = card[4:].partition("\n---\n")
    assert sep, "the front matter is not closed by ---"
    return yaml.safe_load(head)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small trained a3c run on CartPole, completed with results.json and replay.mp4."""
    run = tmp_path_factory.mktemp("hub") / "run"
    result = train("a3c", ENV_ID, 1024, seed=0, out=run, device="cpu")
    write_results_and_video(run)
    return run, result.agent


@pytest.fixture(scope="module")
def pushed(trained, tmp_path_factory):
    """The run pushed with the command line to a local folder given as an absolute path."""
    run, _ = trained
    target = tmp_path_factory.mktemp("push") / "target-folder"
    proc = subprocess.run([sys.executable, "-m", "equirl", "push", str(run), str(target)], check=False,
                          capture_output=True, text=True, timeout=120, env=clean_env(HF_HUB_OFFLINE="1"),
                          cwd=target.parent)
    assert proc.returncode == 0, proc.stderr
    assert str(target) in proc.stdout
    return target


# ---- round trip through a local folder -------------------------------------------------------

def test_pushed_folder_holds_exactly_the_repo_files(trained, pushed):
    run, _ = trained
    assert set(os.listdir(pushed)) == REPO_FILES
    for name in ("config.json", "model.safetensors", "results.json", "replay.mp4"):
        assert (pushed / name).read_bytes() == (run / name).read_bytes(), name


def test_push_then_load_in_a_fresh_process_gives_identical_weights_and_actions(trained, pushed, tmp_path):
    _, agent = trained
    expected_actions = agent.act(observations(), greedy=True).tolist()
    out = load_in_fresh_process([str(pushed)], tmp_path, clean_env(HF_HUB_OFFLINE="1"))[str(pushed)]
    assert "error" not in out, out
    assert out["agent"] == "a3c"
    assert out["weights"] == weights_digest(agent.weights())
    assert out["actions"] == expected_actions
    assert Path(out["source_dir"]) == pushed


def test_weights_digest_tells_agents_apart(trained, tmp_path):
    """The round-trip check above is only as good as the digest: another seed must differ."""
    _, agent = trained
    other = train("a3c", ENV_ID, 128, seed=1, out=None, device="cpu").agent
    assert weights_digest(other.weights()) != weights_digest(agent.weights())


def test_card_has_the_hub_metadata(pushed):
    meta = front_matter((pushed / "README.md").read_text(encoding="utf-8"))
    assert meta["library_name"] == "equirl"
    assert {ENV_ID, "reinforcement-learning", "deep-reinforcement-learning"} <= set(meta["tags"])
    [model] = meta["model-index"]
    [result] = model["results"]
    assert result["dataset"]["name"] == ENV_ID
    [metric] = result["metrics"]
    assert metric["type"] == "mean_reward"
    assert metric["value"] == "1.00 +/- 0.50"


def test_card_strings_stay_data_in_yaml(trained, tmp_path):
    """An env id that looks like a YAML tag is rendered as a quoted string, not a tag."""
    run, _ = trained
    config = json.loads((run / "config.json").read_text())
    config["env"]["env_id"] = "!!python/object/apply:os.system ['echo pwned']"
    card = publish.render_card(config, RESULTS, "someorg/somerepo")
    meta = front_matter(card)  # yaml.safe_load would raise on a python tag
    assert config["env"]["env_id"] in meta["tags"]


def test_card_says_where_subnormals_were_flushed(trained):
    run, _ = trained
    config = json.loads((run / "config.json").read_text())
    state = config["training"]["flush_denormal"]["0"]  # measured by the run itself
    assert f"- subnormal floats flushed to zero: {state}\n" in publish.render_card(config, RESULTS, "o/r")
    config["training"]["flush_denormal"] = {"500000": "all threads", "0": "off"}
    card = publish.render_card(config, RESULTS, "o/r")
    assert "- subnormal floats flushed to zero: off from step 0; all threads from step 500,000\n" in card
    config["training"]["flush_denormal"] = ["not", "a", "map"]  # a hand-edited config: no line, no crash
    assert "subnormal floats" not in publish.render_card(config, RESULTS, "o/r")


def test_card_says_when_the_weights_stop_short_of_the_command(trained):
    """A checkpoint shipped before the command's --steps (soft-q-Pong: 1,879,840 of 3M) must not
    read as a finished 3M-step run."""
    run, _ = trained
    config = json.loads((run / "config.json").read_text())
    done = config["training"]["steps_done"]
    assert f"- agent steps: {done}\n" in publish.render_card(config, RESULTS, "o/r")  # finished run
    config["training"].update(total_steps=3_000_000, steps_done=1_879_840)
    card = publish.render_card(config, RESULTS, "o/r")
    assert "- agent steps: 1879840 (a checkpoint of the command's 3,000,000: " in card


# ---- the real Hugging Face cache layout, offline ---------------------------------------------

def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def build_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """Lay a repo out as huggingface_hub does: blobs named by hash (sha256 for LFS files such as
    safetensors and videos, the git blob sha1 otherwise), a snapshot folder of relative links to
    them, and refs/main holding the commit. Returns the snapshot folder."""
    org, name = repo_id.split("/")
    storage = cache / f"models--{org}--{name}"
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    (storage / "refs").mkdir(exist_ok=True)
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for filename, data in files.items():
        lfs = filename.endswith((".safetensors", ".mp4"))
        blob = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        (storage / "blobs" / blob).write_bytes(data)
        os.symlink(f"../../blobs/{blob}", snapshot / filename)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


def test_load_from_the_hf_cache_offline_through_huggingface_hub(trained, pushed, tmp_path):
    _, agent = trained
    cache = tmp_path / "hf-cache"
    snapshot = build_hf_cache(cache, "testorg/cartpole-a3c", {n: (pushed / n).read_bytes() for n in REPO_FILES})
    sources = ["testorg/cartpole-a3c", f"testorg/cartpole-a3c@{COMMIT}", f"testorg/cartpole-a3c@{'0' * 40}"]
    env = clean_env(HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    out = load_in_fresh_process(sources, tmp_path, env)
    expected_actions = agent.act(observations(), greedy=True).tolist()
    for source in sources[:2]:
        assert "error" not in out[source], out[source]
        assert out[source]["weights"] == weights_digest(agent.weights()), source
        assert out[source]["actions"] == expected_actions, source
        # Read from the snapshot huggingface_hub resolved, not from anywhere else.
        assert Path(out[source]["source_dir"]).resolve() == snapshot.resolve(), source
    # A commit that is not cached is a clear miss, not another revision's files.
    assert "not in the local Hugging Face cache" in out[sources[2]]["error"]


def test_load_from_the_hf_cache_in_process(trained, pushed, tmp_path, monkeypatch):
    """The same through huggingface_hub in this process, its cache folder patched."""
    from huggingface_hub import constants

    _, agent = trained
    cache = tmp_path / "hf-cache"
    snapshot = build_hf_cache(cache, "testorg/inproc", {n: (pushed / n).read_bytes() for n in REPO_FILES})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    loaded = equirl.load("testorg/inproc", revision="main")
    assert Path(loaded.source_dir).resolve() == snapshot.resolve()
    assert weights_digest(loaded.weights()) == weights_digest(agent.weights())


# ---- failing fast and clearly offline ---------------------------------------------------------

def test_offline_miss_is_fast_and_says_not_cached(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(equirl.LoadError) as info:
        equirl.load("someorg/not-cached")
    seconds = time.perf_counter() - start
    print(f"offline miss with HF_HUB_OFFLINE=1: {seconds * 1000:.2f} ms")
    assert seconds < 2.0
    message = str(info.value)
    assert "someorg/not-cached" in message
    assert "not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE" in message


def test_unreachable_hub_miss_is_fast_without_hf_hub_offline(trained, pushed, tmp_path):
    """No HF_HUB_OFFLINE and no network (as on this machine): a cached repo still loads, and a
    repo that is not cached is a quick, clear LoadError. Timed around the load call only, in a
    process that never saw HF_HUB_OFFLINE."""
    code = r'''
import json, sys, time, equirl
from equirl.hub.client import hub_reachable
out = {}
for source in sys.argv[1:]:
    start = time.perf_counter()
    try:
        agent = equirl.load(source)
        out[source] = {"type": None, "source_dir": str(agent.source_dir)}
    except Exception as err:
        out[source] = {"type": type(err).__name__, "error": str(err)}
    out[source]["seconds"] = time.perf_counter() - start
out["reachable"] = hub_reachable()
print(json.dumps(out))
'''
    cache = tmp_path / "hf-cache"
    snapshot = build_hf_cache(cache, "testorg/cached", {n: (pushed / n).read_bytes() for n in REPO_FILES})
    env = clean_env(HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"))
    proc = subprocess.run([sys.executable, "-c", code, "testorg/cached", "someorg/not-cached"], cwd=tmp_path,
                          env=env, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    miss = out["someorg/not-cached"]
    print(f"miss without HF_HUB_OFFLINE (Hub reachable: {out['reachable']}): {miss['seconds'] * 1000:.2f} ms")
    assert miss["type"] == "LoadError", miss
    assert miss["seconds"] < 5.0
    if not out["reachable"]:
        assert "not in the local Hugging Face cache" in miss["error"]
        assert "cannot be reached" in miss["error"]
        cached = out["testorg/cached"]
        assert cached["type"] is None, cached
        assert Path(cached["source_dir"]).resolve() == snapshot.resolve()


def test_hanging_network_cannot_hold_a_load(tmp_path, monkeypatch):
    """A connection (or DNS lookup) that never answers: the load still fails in about 2 s."""
    from huggingface_hub import constants

    from equirl.hub import client

    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise OSError("gave up")

    monkeypatch.setattr(client.socket, "create_connection", hang)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    try:
        with pytest.raises(equirl.LoadError) as info:
            equirl.load("someorg/not-cached")
    finally:
        seconds = time.perf_counter() - start
        release.set()
    print(f"miss with a hanging connection: {seconds:.3f} s")
    assert seconds < 3.0
    assert "cannot be reached" in str(info.value)


# ---- pushing to the Hub: one commit, intercepted ---------------------------------------------

class FakeHub:
    def __init__(self):
        self.repos: list[tuple[tuple, dict]] = []
        self.commits: list[dict] = []
        self.other: list[str] = []
        self.fail: dict[str, Exception] = {}


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    from huggingface_hub import HfApi

    hub = FakeHub()

    def create_repo(self, repo_id, *args, **kwargs):
        hub.repos.append(((repo_id, *args), kwargs))
        if "create_repo" in hub.fail:
            raise hub.fail["create_repo"]
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, *args, **kwargs):
        # The staged files are gone once push() returns: read them now.
        files = {}
        for op in operations:
            with op.as_file() as f:
                files[op.path_in_repo] = f.read()
        hub.commits.append({"repo_id": repo_id, "files": files, "names": [op.path_in_repo for op in operations],
                            "kwargs": kwargs})
        if "create_commit" in hub.fail:
            raise hub.fail["create_commit"]

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/{'a' * 40}"

        return Info()

    def forbidden(name):
        def record(self, *args, **kwargs):
            hub.other.append(name)
            raise AssertionError(f"push used HfApi.{name}")
        return record

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    for name in ("upload_file", "upload_folder", "upload_large_folder", "create_commits_on_pr", "delete_file"):
        if hasattr(HfApi, name):
            monkeypatch.setattr(HfApi, name, forbidden(name))
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    monkeypatch.chdir(tmp_path)  # "someorg/somerepo" must not name a folder here
    return hub


def test_hub_push_is_exactly_one_commit_with_the_five_files(trained, fake_hub):
    run, _ = trained
    url = publish.push(run, "someorg/somerepo")
    assert url == f"https://huggingface.co/someorg/somerepo/commit/{'a' * 40}"
    assert [args[0] for args, _ in fake_hub.repos] == ["someorg/somerepo"]
    assert fake_hub.repos[0][1].get("exist_ok") is True
    assert fake_hub.other == []
    [commit] = fake_hub.commits
    assert commit["repo_id"] == "someorg/somerepo"
    assert sorted(commit["names"]) == sorted(REPO_FILES)
    for name in ("config.json", "model.safetensors", "results.json", "replay.mp4"):
        assert commit["files"][name] == (run / name).read_bytes(), name
    card = commit["files"]["README.md"].decode("utf-8")
    meta = front_matter(card)
    assert meta["library_name"] == "equirl"
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == "1.00 +/- 0.50"
    assert 'equirl.load("someorg/somerepo")' in card


def test_hub_push_without_token_says_set_hf_token(trained, fake_hub, monkeypatch):
    import huggingface_hub

    run, _ = trained
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(publish.PushError) as info:
        publish.push(run, "someorg/somerepo")
    assert "HF_TOKEN" in str(info.value)
    assert fake_hub.repos == [] and fake_hub.commits == []


@pytest.mark.parametrize("where, status", [("create_commit", 403), ("create_repo", 401), ("create_commit", 500)])
def test_hub_refusal_is_a_one_line_push_error(trained, fake_hub, where, status):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    run, _ = trained
    request = httpx2.Request("POST", "https://huggingface.co/api/models/someorg/somerepo/commit/main")
    fake_hub.fail[where] = HfHubHTTPError(f"{status} Client Error: refused\nfor url ...\nmore detail",
                                          response=httpx2.Response(status, request=request))
    with pytest.raises(publish.PushError) as info:
        publish.push(run, "someorg/somerepo")
    message = str(info.value)
    assert "\n" not in message
    assert "someorg/somerepo" in message
    assert str(status) in message
    assert len(fake_hub.commits) == (1 if where == "create_commit" else 0)


def test_cli_push_without_token_exits_2_with_a_clear_error(trained, tmp_path):
    run, _ = trained
    env = clean_env(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "equirl", "push", str(run), "someorg/somerepo"], cwd=tmp_path,
                          env=env, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "HF_TOKEN" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "someorg").exists()  # a repo id, not a folder to write into


# ---- the agents' own hub methods -------------------------------------------------------------

def test_from_pretrained_checks_the_agent_class(pushed, trained):
    from equirl import A3C, Agent, SoftQ

    _, agent = trained
    assert isinstance(A3C.from_pretrained(str(pushed)), A3C)
    loaded = Agent.from_pretrained(str(pushed))
    assert weights_digest(loaded.weights()) == weights_digest(agent.weights())
    with pytest.raises(TypeError, match="a3c"):
        SoftQ.from_pretrained(str(pushed))


def test_save_pretrained_writes_a_loadable_folder(trained, tmp_path):
    _, agent = trained
    folder = tmp_path / "saved"
    agent.save_pretrained(folder)
    assert set(os.listdir(folder)) == {"config.json", "model.safetensors"}
    loaded = equirl.load(folder)
    assert weights_digest(loaded.weights()) == weights_digest(agent.weights())
    assert loaded.env_spec == agent.env_spec
    obs = observations()
    assert loaded.act(obs, greedy=True).tolist() == agent.act(obs, greedy=True).tolist()


def test_push_to_hub_is_one_commit(trained, fake_hub, monkeypatch):
    _, agent = trained
    # results.json and replay.mp4 are made by evaluation; stand in for it here.
    monkeypatch.setattr(publish, "complete_repo", lambda folder, agent, *a, **k: write_results_and_video(folder))
    agent.push_to_hub("someorg/pushed-agent")
    [commit] = fake_hub.commits
    assert commit["repo_id"] == "someorg/pushed-agent"
    assert sorted(commit["names"]) == sorted(REPO_FILES)
    assert commit["files"]["replay.mp4"] == VIDEO


def test_make_env_rebuilds_the_recorded_env(pushed):
    loaded = equirl.load(pushed)
    env = loaded.make_env(num_envs=3)
    try:
        assert env.spec.env_id == ENV_ID
        assert env.num_actions == loaded.num_actions == 2
        obs = env.reset(seed=0)
        assert obs.shape == (3, 4)
        actions = loaded.act(obs, greedy=True)
        assert actions.shape == (3,) and set(actions.tolist()) <= {0, 1}
        env.step(actions)
    finally:
        env.close()


# ---- opt-in: a real push to the Hub -----------------------------------------------------------

@pytest.mark.skipif(not os.environ.get("HF_TOKEN"), reason="pushes to the real Hugging Face Hub: set HF_TOKEN "
                    "(and optionally HF_TEST_REPO) to run it")
def test_online_push_and_load_back(trained, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    run, agent = trained
    repo = os.environ.get("HF_TEST_REPO") or f"{HfApi().whoami()['name']}/equirl-test"
    url = publish.push(run, repo, commit_message="equirl online test")
    assert repo in url
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "fresh-cache"))  # really download it
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    loaded = equirl.load(repo)
    assert weights_digest(loaded.weights()) == weights_digest(agent.weights())
    assert set(os.listdir(loaded.source_dir)) == REPO_FILES


def test_push_evaluates_and_records_what_is_missing(tmp_path):
    """A pushed repo is always complete: results.json and replay.mp4 are made when absent."""
    from equirl.hub.publish import push
    from equirl.zoo.train import train as train_agent

    run = tmp_path / "bare-run"
    train_agent("a3c", "CartPole-v1", 1024, seed=0, out=run)
    target = tmp_path / "complete"
    push(run, str(target))
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["config.json", "model.safetensors", "results.json", "replay.mp4", "README.md"])
    results = json.loads((target / "results.json").read_text())
    assert results["summary"]["episodes"] == 10 and len(results["episodes"]["returns"]) == 10
    from moviepy import VideoFileClip

    with VideoFileClip(str(target / "replay.mp4")) as clip:  # decodable, CartPole's native 600x400
        assert list(clip.size) == [600, 400] and clip.duration > 0
    card = (target / "README.md").read_text()
    assert f'value: "{results["summary"]["mean"]:.2f} +/- {results["summary"]["std"]:.2f}"' in card
