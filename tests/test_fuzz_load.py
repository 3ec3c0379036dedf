"""Fuzzing ``equirl.load`` with mutated repos (issue 8).

Over 1,000 repos derived from one good a3c/CartPole repo are fed to ``equirl.load``: truncated,
corrupted or re-headered safetensors, wrong dtypes, shapes and byte ranges, huge declared sizes,
pickles renamed ``model.safetensors``, configs with wrong types, extra keys, deep nesting, huge
numbers and non-UTF-8 bytes. For every repo, ``load`` must either return an :class:`equirl.Agent`
that acts on a batch of 3 observations with 3 valid actions, or raise :class:`equirl.LoadError`
with a non-empty one-line message. Anything else is a failure: another exception type, a call to
pickle / torch.load / os.system (all booby-trapped for the whole module, and an evil pickle
that would create a canary file), a load slower than ``LOAD_LIMIT_S``, or (checked at the end)
peak RSS growing by more than ``RSS_LIMIT_MB``.

Each family of mutations is one hypothesis run (``derandomize=True``: the same repos every run,
so CI is reproducible). A family does not stop at its first bad repo: every example runs, and
the family's test then fails listing each distinct problem with the mutation that caused it.
The last tests of the file check that at least 1,000 distinct mutated repos were loaded and
that memory stayed bounded; pytest runs them after the families (file order).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import re
import resource
import signal
import struct
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save

import equirl
from equirl.hub import schema
from equirl.hub.client import MAX_HEADER_BYTES, agent_from_config
from equirl.zoo.train import train

LOAD_LIMIT_S = 2.0  # per repo: load() plus act() on 3 observations
HANG_S = 60  # a SIGALRM guard for a load stuck in Python code
RSS_LIMIT_MB = 1536  # peak RSS growth over the whole fuzz run
MIN_REPOS = 1000

# ---- bookkeeping shared by the families ----------------------------------------------------------


@dataclass
class Family:
    run: int = 0
    repos: set = field(default_factory=set)  # digests of the distinct mutated repos fed to load()
    loaded: int = 0
    refused: int = 0
    problems: dict = field(default_factory=dict)  # signature -> [count, note, problem]


FAMILIES: dict[str, Family] = {}
EXPECTED = {}  # family -> max_examples, filled as the families are declared
TRAP_CALLS: list[str] = []
STATE: dict = {}
CANARY = Path(tempfile.gettempdir()) / f"equirl-fuzz-pwned-{os.getpid()}"


class Trapped(Exception):
    """Raised by pickle/torch.load/os.system while the module runs (never a LoadError)."""


class Hung(Exception):
    """Raised by the SIGALRM guard."""


@dataclass
class Case:
    """One mutated repo: file contents (None: the file is absent) and what was done."""

    note: str
    config: bytes | None
    weights: bytes | None


@dataclass
class Good:
    config: bytes
    weights: bytes
    config_obj: dict
    header: dict
    header_len: int
    data: bytes
    tensors: dict
    torch_pickle: bytes


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Good:
    """The one good repo of the session (a3c on CartPole-v1), as bytes."""
    run = tmp_path_factory.mktemp("fuzz") / "run"
    train("a3c", "CartPole-v1", 1024, seed=0, out=run, device="cpu")
    config, weights = (run / "config.json").read_bytes(), (run / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", weights[:8])
    tensors = load_file(str(run / "model.safetensors"))
    buffer = io.BytesIO()
    torch.save(tensors, buffer)  # a torch checkpoint: a zip of pickles
    equirl.load(run).act(np.zeros((3, 4), np.float32))  # warm-up, so RSS is measured from here
    STATE["rss_start_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    STATE["t_start"] = time.perf_counter()
    return Good(config, weights, json.loads(config), json.loads(weights[8:8 + header_len]), header_len,
                weights[8 + header_len:], tensors, buffer.getvalue())


@pytest.fixture(scope="module", autouse=True)
def trap(good):
    """For the whole module, unpickling, torch.load, numpy.load and spawning commands record the
    call and raise :class:`Trapped`; every example checks that nothing was recorded."""
    def booby(name):
        def called(*args, **kwargs):
            TRAP_CALLS.append(name)
            raise Trapped(f"{name} was called while loading a fuzzed repo")
        return called

    with pytest.MonkeyPatch.context() as mp:
        for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
                             (torch.serialization, "load"), (np, "load"), (os, "system"), (os, "popen"),
                             (subprocess, "Popen")):
            mp.setattr(module, name, booby(f"{module.__name__}.{name}"))
        yield TRAP_CALLS


# ---- running one repo ----------------------------------------------------------------------------


@contextlib.contextmanager
def hang_guard(seconds: int):
    def alarm(signum, frame):
        raise Hung(f"load() still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if f"{os.sep}equirl{os.sep}" in f.filename] or frames
    if not ours:
        return "?"
    frame = ours[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} ({frame.line})"


def signature_of(message: str) -> str:
    """A message with its variable parts (numbers, quoted text) blanked, to group problems."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message)
    text = re.sub(r"\b\d+\b", "N", text).replace("\n", "\\n").replace("\r", "\\r")
    return text[:90]


def check(good: Good, family: str, case: Case, must_load: bool = False) -> None:
    """Load one mutated repo; record what happened and any problem (never raises for equirl's
    behaviour, so every example of the family runs)."""
    stats = FAMILIES.setdefault(family, Family())
    stats.run += 1
    if (case.config, case.weights) != (good.config, good.weights):
        digest = hashlib.sha256()
        for part in (case.config, case.weights):
            digest.update(b"-" if part is None else b"+%d:" % len(part) + part)
        stats.repos.add(digest.digest())
    problem = signature = None
    calls_before = len(TRAP_CALLS)
    with tempfile.TemporaryDirectory(prefix="equirl-fuzz-") as tmp:
        folder = Path(tmp)
        if case.config is not None:
            (folder / "config.json").write_bytes(case.config)
        if case.weights is not None:
            (folder / "model.safetensors").write_bytes(case.weights)
        start = time.perf_counter()
        try:
            with hang_guard(HANG_S):
                agent = equirl.load(folder)
                if not isinstance(agent, equirl.Agent):
                    raise AssertionError(f"load() returned a {type(agent).__name__}, not an Agent")  # noqa: TRY004
                obs = np.zeros((3, *agent.obs_info.shape), dtype=agent.obs_info.dtype)
                for greedy in (False, True):
                    actions = np.asarray(agent.act(obs, greedy=greedy))
                    if actions.shape != (3,) or actions.dtype.kind not in "iu" \
                            or not ((actions >= 0) & (actions < agent.num_actions)).all():
                        raise AssertionError(f"act() on 3 observations returned {actions!r} "
                                             f"({agent.num_actions} actions)")
            stats.loaded += 1
        except equirl.LoadError as err:
            stats.refused += 1
            message = str(err)
            if must_load:
                problem, signature = f"a valid repo was refused: {message[:300]}", "valid repo refused"
            elif not message.strip():
                problem, signature = "LoadError with an empty message", "empty LoadError message"
            elif "\n" in message or "\r" in message:
                problem = f"LoadError message is not one line: {message[:300]!r}"
                signature = f"multi-line LoadError: {signature_of(message.replace(str(folder), '<repo>'))}"
        except Exception as err:  # noqa: BLE001 - any other exception is the finding
            problem = f"{type(err).__name__}: {str(err)[:300]} at {where(err)}"
            signature = f"{type(err).__name__} at {where(err)}"
        elapsed = time.perf_counter() - start
    if elapsed > LOAD_LIMIT_S and problem is None:
        problem, signature = f"load() + act() took {elapsed:.1f} s (limit {LOAD_LIMIT_S} s)", "too slow"
    if len(TRAP_CALLS) > calls_before:
        problem, signature = f"reached {TRAP_CALLS[calls_before:]} ({problem})", "unpickling or a command reached"
    if CANARY.exists():
        problem, signature = "the evil pickle's canary file was created: code from the repo ran", "code execution"
        CANARY.unlink()
    if problem is not None:
        note = readable(case.note)
        entry = stats.problems.setdefault(signature, [0, note, problem])
        entry[0] += 1
        if len(note) < len(entry[1]):  # keep the shortest mutation that shows it
            entry[1], entry[2] = note, problem


SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
              HealthCheck.large_base_example]


def run_family(good: Good, family: str, strategy, max_examples: int, explicit=(), must_load=False,
               build=None) -> None:
    """Run hypothesis over ``strategy`` (``build`` turns a draw into a Case), then fail listing
    every distinct problem found."""
    EXPECTED[family] = max_examples
    FAMILIES[family] = Family()

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              phases=(Phase.explicit, Phase.generate), suppress_health_check=SUPPRESSED,
              print_blob=False)
    @given(strategy)
    def fuzz(draw):
        check(good, family, build(draw) if build else draw, must_load)

    for case in explicit:
        fuzz = example(case)(fuzz)
    fuzz()
    stats = FAMILIES[family]
    assert stats.run >= min(max_examples, 10), f"{family}: only {stats.run} examples ran"
    if stats.problems:
        lines = [(f"{family}: {sum(c for c, _, _ in stats.problems.values())} of {stats.run} repos were not "
                  f"handled (loaded or refused with LoadError); {len(stats.problems)} distinct problem(s):")]
        for signature, (count, note, problem) in stats.problems.items():
            lines.append(f"  [{count}x] {signature}\n      mutation: {note[:400]}\n      outcome:  {problem[:400]}")
        pytest.fail("\n".join(lines), pytrace=False)


# ---- values used by the mutations ----------------------------------------------------------------

SENTINEL = re.compile(r'"@@fuzz:(\w+):(-?\d+)@@"')


def literal(kind: str, n: int) -> str:
    """JSON text json.dumps cannot write: integers of n digits, nesting n deep, 1e<n>."""
    if kind == "int":
        return ("-" if n < 0 else "") + "9" * abs(n)
    if kind == "list":
        return "[" * n + "]" * n
    if kind == "obj":
        return '{"a": ' * n + "0" + "}" * n
    return f"1e{n}"


def readable(note: str) -> str:
    """A mutation's description with the sentinel strings spelled out."""
    names = {"int": "{n}-digit integer", "list": "[ nested {n} deep", "obj": "{{ nested {n} deep",
             "float": "number 1e{n}"}
    return re.sub(r"'@@fuzz:(\w+):(-?\d+)@@'", lambda m: "<" + names[m[1]].format(n=m[2]) + ">", note)


def render(obj, ensure_ascii: bool = True) -> bytes:
    """json.dumps (NaN and Infinity allowed) with the sentinel strings replaced by their text."""
    text = json.dumps(obj, allow_nan=True, ensure_ascii=ensure_ascii)
    text = SENTINEL.sub(lambda m: literal(m[1], int(m[2])), text)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8


sentinels = st.one_of(
    st.sampled_from([4300, 4301, 5000, 50_000, -4301]).map(lambda n: f"@@fuzz:int:{n}@@"),
    st.tuples(st.sampled_from(["list", "obj"]), st.sampled_from([2, 100, 998, 1000, 1500, 100_000]))
      .map(lambda t: f"@@fuzz:{t[0]}:{t[1]}@@"),
    st.sampled_from([308, 309, 400, -400, 99_999]).map(lambda n: f"@@fuzz:float:{n}@@"),
)

SPECIAL_STRINGS = [
    "!!python/object/apply:os.system ['touch /tmp/pwned']", "!!python/name:os.system", "__class__", "__reduce__",
    "__init__", "__metadata__", "py/object", "py/reduce", "os.system", "os:system", "os:system-v0",
    "equirl.cli:main", "equirl.cli:main-v0", "builtins:eval-v0", "CartPole-v1", "ALE/Pong-v5", "Pong",
    *equirl.AGENTS, "mlp", "nature_cnn", "gymnasium", "atari", "adam", "rmsprop", "uniform", "none", "proper",
    "naive", "analytic", "sampled", "soft", "hard", "boltzmann", "epsilon_greedy", "", " ", "\ud800", "\x00",
    "\u202e", "x\ny", "\x1b[2J", "a" * 300, "0" * 32, "F32", "I8", "BOOL",
]
CONFIG_KEYS = ["format_version", "library", "agent", "hyperparameters", "network", "trunk", "kind", "obs_shape",
               "hidden", "features", "num_actions", "env", "env_id", "reward_clipping", "ale", "rom_md5",
               "gym_kwargs", "seed", "training", "float64", "shared_trunk", "num_envs", "tau", "lr"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.sampled_from([0, 1, -1, 2, 3, 4, 36, 64, 1024, 16_384, 2**31, 2**63 - 1, 2**63, 2**64, -2**63, 10**30,
                     10**400, -10**400]),  # 10**400: an int no float can hold
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324, 0.5, 1.0]),
    st.text(max_size=12), st.sampled_from(SPECIAL_STRINGS), sentinels,
)
NASTY_KEYS = ["x\ny", "line\r\nbreak", "\x1b[2J\x1b[31mred", "__class__", "__reduce__", "py/object", ""]
dict_keys = st.one_of(st.text(max_size=10), st.sampled_from(CONFIG_KEYS + SPECIAL_STRINGS), st.sampled_from(NASTY_KEYS))
json_values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=5),
                                                           st.dictionaries(dict_keys, kids, max_size=5)),
                           max_leaves=25)


def paths(node, prefix=()) -> list[tuple]:
    """Every key path under ``node`` (dict keys and list indices), depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out = []
    for key, value in items:
        out.append(prefix + (key,))
        out += paths(value, prefix + (key,))
    return out


def navigate(node, path):
    for key in path:
        node = node[key]
    return node


def dotted(path) -> str:
    return ".".join(map(str, path)) or "<root>"


# ---- families: model.safetensors -----------------------------------------------------------------

HEADER_LENGTHS = [0, 1, 2, 7, 8, 100, 2**31, 2**32, 2**63, 2**64 - 1, MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1]
EVIL_PICKLE = b"cos\nsystem\n(S'touch " + str(CANARY).encode() + b"'\ntR."  # protocol 0: os.system(...)
DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "BOOL", "F8_E4M3",
          "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "C64", "f32", "F32 ", "float32", ""]


def weights_bytes_cases(good: Good):
    """Byte-level corruption of model.safetensors, and files that are not safetensors at all."""
    w, header_end = good.weights, 8 + good.header_len
    positions = st.one_of(st.integers(0, header_end - 1), st.integers(0, len(w) - 1))
    flips = st.lists(st.tuples(positions, st.integers(1, 255)), min_size=1, max_size=8)

    def flip(pairs):
        out = bytearray(w)
        for pos, xor in pairs:
            out[pos] ^= xor
        return Case(f"xor bytes {pairs}", good.config, bytes(out))

    def overwrite(args):
        pos, chunk = args
        return Case(f"overwrite at {pos} with {chunk[:40]!r} ({len(chunk)} bytes)", good.config,
                    w[:pos] + chunk + w[pos + len(chunk):])

    def header_length(n):
        return Case(f"header length field = {n}", good.config, struct.pack("<Q", n) + w[8:])

    def pickled(obj_protocol):
        obj, protocol = obj_protocol
        return Case(f"pickle.dumps({obj!r:.80}, protocol={protocol}) as model.safetensors", good.config,
                    pickle.dumps(obj, protocol=protocol))

    return st.one_of(
        st.integers(0, len(w) - 1).map(lambda n: Case(f"truncated to {n} bytes", good.config, w[:n])),
        st.integers(0, header_end + 64).map(lambda n: Case(f"truncated to {n} bytes", good.config, w[:n])),
        flips.map(flip),
        st.tuples(positions, st.binary(min_size=1, max_size=64)).map(overwrite),
        st.one_of(st.sampled_from(HEADER_LENGTHS), st.integers(0, 2**64 - 1),
                  st.integers(good.header_len - 16, good.header_len + 16).filter(lambda n: n >= 0))
          .filter(lambda n: n != good.header_len).map(header_length),
        st.tuples(json_values.filter(lambda v: not (isinstance(v, str) and v.startswith("@@fuzz"))),
                  st.integers(0, pickle.HIGHEST_PROTOCOL)).map(pickled),
        st.sampled_from([
            Case("empty file", good.config, b""),
            Case("no model.safetensors", good.config, None),
            Case("torch.save of the good tensors as model.safetensors", good.config, good.torch_pickle),
            Case("pickle calling os.system as model.safetensors", good.config, EVIL_PICKLE),
            Case("header length, then the evil pickle", good.config,
                 struct.pack("<Q", len(EVIL_PICKLE)) + EVIL_PICKLE),
            Case("8 zero bytes", good.config, b"\0" * 8),
            Case("good header, no data", good.config, w[:header_end]),
            Case("header only, length 2, '{}'", good.config, struct.pack("<Q", 2) + b"{}"),
            Case("the config as the weights", good.config, good.config),
        ]),
        st.binary(max_size=2048).map(lambda b: Case(f"random bytes {b[:40]!r} ({len(b)} bytes)", good.config, b)),
        st.binary(min_size=1, max_size=256).map(lambda b: Case(f"appended {b[:40]!r}", good.config, w + b)),
    )


@st.composite
def header_cases(draw, good: Good):
    """Structural edits of the JSON header (dtypes, shapes, byte ranges, names, metadata), then
    a header length and a data section that may or may not agree with it."""
    header = copy.deepcopy(good.header)
    names = [n for n in good.header if n != "__metadata__"]
    notes = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names))
        op = draw(st.sampled_from(["dtype", "dtype", "shape", "shape", "offsets", "offsets", "drop_field",
                                   "entry", "remove", "add", "rename", "swap", "metadata"]))
        entry = header.get(name)
        if op in ("dtype", "shape", "offsets", "drop_field") and not isinstance(entry, dict) \
                or op in ("remove", "rename") and name not in header:
            continue  # an earlier edit removed or replaced this tensor
        if op == "dtype":
            value = entry["dtype"] = draw(st.one_of(st.sampled_from(DTYPES), st.text(max_size=8), json_values))
        elif op == "shape":
            dims = st.one_of(st.integers(-3, 2**64), st.sampled_from([0, 1, 2, 4, 64, 4096, 2**31, 2**32, 2**63 - 1,
                                                                       2**63, 2**64 - 1, -1, True, 1.0]))
            shape = good.header[name]["shape"]
            value = entry["shape"] = draw(st.one_of(
                st.lists(dims, max_size=5), st.lists(sentinels, min_size=1, max_size=2), json_values,
                st.just(shape + [1]), st.just([math.prod(shape)]), st.just(shape[::-1])))
        elif op == "offsets":
            size = len(good.data)
            ends = st.one_of(st.integers(-8, size + 8), st.sampled_from([0, size, 2**63, 2**64 - 1, 2**64]))
            other = good.header[draw(st.sampled_from(names))]["data_offsets"]  # overlapping another tensor
            value = entry["data_offsets"] = draw(st.one_of(
                st.lists(ends, max_size=3), st.tuples(ends, ends).map(list), json_values,
                st.just(good.header[name]["data_offsets"][::-1]), st.just(list(other)),
                st.just([other[0], good.header[name]["data_offsets"][1]])))
        elif op == "drop_field":
            value = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
            entry.pop(value, None)
        elif op == "entry":
            value = header[name] = draw(json_values)
        elif op == "remove":
            value = header.pop(name)
        elif op in ("add", "rename"):
            value = draw(st.one_of(st.text(max_size=30), st.sampled_from(
                [f"{name}.x", name.upper(), name + "\n", "evil\nname", "\x1b[31mred", "backdoor.weight", "",
                 "__metadata__", name + "\x00", " " + name] + names)))
            if op == "rename":
                header[value] = header.pop(name)
            else:
                header[value] = copy.deepcopy(good.header[name]) if draw(st.booleans()) else draw(json_values)
        elif op == "swap":
            value = draw(st.sampled_from(names))
            header[name], header[value] = header.get(value), entry
        elif op == "metadata":
            value = header["__metadata__"] = draw(st.one_of(
                json_values, st.dictionaries(st.text(max_size=8), st.text(max_size=8))))
        notes.append(f"{op} {name}: {value!r:.100}")
    if draw(st.integers(0, 19)) == 0:
        header = draw(json_values)
        notes = [f"header = {header!r:.100}"]
    text = render(header, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:  # a duplicated key: Python's json and the Rust reader may disagree
        text = b'{"policy.bias": {"dtype": "I8", "shape": [8], "data_offsets": [0, 8]}, ' + text[1:]
        notes.append("duplicate policy.bias (I8) first")
    text += b" " * (-len(text) % 8)
    length = len(text) + draw(st.sampled_from([0, 0, 0, 0, -1, 1, -8, 8]))
    data = draw(st.sampled_from(["data", "data", "data", "short", "long", "none"]))
    body = {"data": good.data, "short": good.data[:-4], "long": good.data + b"\0" * 8, "none": b""}[data]
    if length != len(text):
        notes.append(f"header length {length} for {len(text)} bytes")
    if data != "data":
        notes.append(f"data {data}")
    return Case("; ".join(notes) or "unchanged", good.config,
                struct.pack("<Q", max(length, 0)) + text + body)


@st.composite
def reencoded_cases(draw, good: Good):
    """Valid files the loader must accept: every tensor in any float dtype, any order, any string
    metadata, any finite or non-finite values."""
    names = list(good.tensors)
    order = draw(st.permutations(names))
    tensors, notes = {}, []
    for name in order:
        dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
        value = good.tensors[name].to(dtype)
        fill = draw(st.sampled_from([None, None, None, math.nan, math.inf, -math.inf, 0.0]))
        if fill is not None:
            value = torch.full_like(value, fill)
        if dtype != torch.float32 or fill is not None:
            notes.append(f"{name}:{str(dtype)[6:]}{'' if fill is None else f'={fill}'}")
        tensors[name] = value.contiguous()
    metadata = draw(st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=4)))
    return Case(f"re-encoded {' '.join(notes) or 'in another order'}; metadata {metadata!r:.60}", good.config,
                save(tensors, metadata=metadata))


def agent_fields(agent_id: str) -> set[str]:
    return {f.name for f in dataclasses.fields(equirl.AGENTS[agent_id].Config)}


network_specs = st.fixed_dictionaries({
    "agent": st.sampled_from(sorted(equirl.AGENTS)),
    "cnn": st.booleans(),
    "mlp_shape": st.lists(st.integers(1, 5), min_size=1, max_size=3),
    "cnn_shape": st.tuples(st.integers(1, 4), st.integers(36, 44), st.integers(36, 44)).map(list),
    "hidden": st.lists(st.integers(1, 16), min_size=1, max_size=3),
    "features": st.integers(1, 32),
    "num_actions": st.integers(1, 6),
    "shared_trunk": st.booleans(),
    "float64": st.booleans(),
    "seed": st.integers(0, 2**63 - 1),
    "dtype": st.sampled_from(["F32", "F16", "BF16", "F64"]),
})


def consistent_case(good: Good, spec: dict) -> Case:
    """A config describing another (small) network, with weights of exactly the shapes that
    network has: equirl's schema accepts the config, so the repo must load and act."""
    config = copy.deepcopy(good.config_obj)
    config["agent"] = spec["agent"]
    fields = agent_fields(spec["agent"])
    config["hyperparameters"] = {k: spec[k] for k in ("shared_trunk", "float64") if k in fields}
    trunk = {"kind": "nature_cnn", "obs_shape": spec["cnn_shape"], "features": spec["features"]} if spec["cnn"] \
        else {"kind": "mlp", "obs_shape": spec["mlp_shape"], "hidden": spec["hidden"]}
    config["network"] = {"trunk": trunk, "num_actions": spec["num_actions"]}
    config["seed"] = spec["seed"]
    raw = json.dumps(config).encode()
    shapes = agent_from_config(schema.parse_config_bytes(raw)).weights()
    generator = torch.Generator().manual_seed(spec["seed"] % 2**32)
    dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}[spec["dtype"]]
    weights = {name: (torch.randn(t.shape, generator=generator) * 0.1).to(dtype) for name, t in shapes.items()}
    return Case(f"{spec['agent']} network {json.dumps(config['network'])} hyperparameters "
                f"{json.dumps(config['hyperparameters'])}, {spec['dtype']} weights", raw, save(weights))


# ---- families: config.json ----------------------------------------------------------------------


@st.composite
def config_json_cases(draw, good: Good):
    """JSON-level edits at any depth: delete a key, replace a value, add a key or list item."""
    config = copy.deepcopy(good.config_obj)
    all_paths = paths(config)
    containers = [()] + [p for p in all_paths if isinstance(navigate(good.config_obj, p), (dict, list))]
    notes = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["delete", "replace", "replace", "replace", "add"]))
        path = draw(st.sampled_from(containers if op == "add" else all_paths))
        try:
            if op == "delete":
                del navigate(config, path[:-1])[path[-1]]
                notes.append(f"delete {dotted(path)}")
            elif op == "replace":
                value = draw(json_values)
                navigate(config, path[:-1])[path[-1]] = value
                notes.append(f"{dotted(path)} = {value!r:.150}")
            else:
                node, value = navigate(config, path), draw(json_values)
                if isinstance(node, dict):
                    key = draw(dict_keys)
                    node[key] = value
                    notes.append(f"add {dotted(path + (key,))} = {value!r:.150}")
                elif isinstance(node, list):
                    index = draw(st.integers(0, len(node)))
                    node.insert(index, value)
                    notes.append(f"insert {value!r:.150} at {dotted(path)}[{index}]")
        except (KeyError, IndexError, TypeError):  # an earlier edit removed or replaced this path
            continue
    ensure_ascii = draw(st.booleans())
    return Case("; ".join(notes) + ("" if ensure_ascii else " (raw UTF-8)"), render(config, ensure_ascii),
                good.weights)


INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82",
                b"\xf4\x90\x80\x80"]


def config_bytes_cases(good: Good):
    """Byte-level damage to config.json: truncation, flipped bytes, other encodings, invalid
    UTF-8, BOMs, deep nesting, random bytes, oversize, absence."""
    raw, text = good.config, good.config.decode()
    string_spans = [m.span(1) for m in re.finditer(r'"([^"]*)"', text)]

    def flip(pairs):
        out = bytearray(raw)
        for pos, xor in pairs:
            out[pos] ^= xor
        return Case(f"config xor bytes {pairs}", bytes(out), good.weights)

    def reencode(args):
        (start, end), char, encoding = args
        changed = text[:start] + char + text[start:end] + text[end:]
        try:
            data = changed.encode(encoding)
        except UnicodeEncodeError:
            data = changed.encode(encoding, "replace")
        return Case(f"{char!r} inserted at {start}, encoded {encoding}", data, good.weights)

    def invalid(args):
        pos, bad = args
        return Case(f"{bad!r} inserted at byte {pos}", raw[:pos] + bad + raw[pos:], good.weights)

    def number(args):
        index, n = args
        spans = [m.span() for m in re.finditer(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?", text)]
        start, end = spans[index % len(spans)]
        return Case(f"number at {start} replaced by {n} digits", (text[:start] + "9" * n + text[end:]).encode(),
                    good.weights)

    return st.one_of(
        st.integers(0, len(raw) - 1).map(lambda n: Case(f"config truncated to {n} bytes", raw[:n], good.weights)),
        st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), min_size=1, max_size=6).map(flip),
        st.tuples(st.sampled_from(string_spans), st.sampled_from(["\u00f6", "\u20ac", "\U0001f600", "\x00"]),
                  st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-16-le", "utf-32", "utf-8-sig"])).map(reencode),
        st.tuples(st.integers(0, len(raw)), st.sampled_from(INVALID_UTF8)).map(invalid),
        st.tuples(st.integers(0, 1000), st.sampled_from([4300, 4301, 4400, 10_000])).map(number),
        st.tuples(st.sampled_from(["[", '{"a":', '{"seed":', "[1,"]), st.sampled_from([999, 1000, 5000, 200_000]))
          .map(lambda t: Case(f"{t[0]!r} * {t[1]}", (t[0] * t[1]).encode(), good.weights)),
        st.binary(max_size=512).map(lambda b: Case(f"random config bytes {b[:40]!r}", b, good.weights)),
        st.sampled_from([
            Case("empty config", b"", good.weights),
            Case("whitespace config", b" \n\t ", good.weights),
            Case("config is null", b"null", good.weights),
            Case("config is []", b"[]", good.weights),
            Case("config is a string", b'"config"', good.weights),
            Case("config is NaN", b"NaN", good.weights),
            Case("no config.json", None, good.weights),
            Case("UTF-8 BOM + config", b"\xef\xbb\xbf" + raw, good.weights),
            Case("UTF-16 BOM + config", b"\xff\xfe" + text.encode("utf-16-le"), good.weights),
            Case("config + 1 MiB of spaces", raw + b" " * (1 << 20), good.weights),
            Case("config twice", raw + raw, good.weights),
            Case("a pickle as config.json", pickle.dumps(good.config_obj), good.weights),
            Case("the evil pickle as config.json", EVIL_PICKLE, good.weights),
            Case("the weights as config.json", good.weights, good.weights),
        ]),
    )


SIZE_FIELDS = [
    (("network", "trunk", "obs_shape"), [[4 * 1024 * 1024], [4 * 1024 * 1024 + 1], [2**31], [2**63], [2**64],
                                         [-4], [0], [4, 0], [4, -1], [2048, 2048, 2], [1, 1, 1, 1],
                                         [780_000],  # 99.8M parameters, just under schema.MAX_PARAMETERS
                                         ["@@fuzz:int:5000@@"]]),
    (("network", "trunk", "hidden"), [[16_384], [16_385], [64] * 16, [64] * 17, [2**31], [0], [-64], [2**64]]),
    (("network", "num_actions"), [1024, 1025, 2**31, 2**64, 0, -1, "@@fuzz:int:4301@@"]),
    (("hyperparameters", "num_envs"), [2**62, 2**64, 0]),
    (("hyperparameters", "n_steps"), [2**62, 0]),
    (("hyperparameters", "hidden"), [[16_384] * 16, [2**40]]),
    (("seed",), [2**63 - 1, 2**63, -1, "@@fuzz:int:4301@@"]),
    (("format_version",), [2**64, 10**100, "@@fuzz:int:4301@@"]),
]


def size_case(good: Good, choice) -> Case:
    path, value = choice
    config = copy.deepcopy(good.config_obj)
    navigate(config, path[:-1])[path[-1]] = value
    return Case(f"{dotted(path)} = {value!r:.80}", render(config), good.weights)


# ---- the tests (pytest runs them in this order) -----------------------------------------------


def test_the_trap_is_armed(good, trap):
    for call in (lambda: pickle.loads(b"\x80\x04K\x01."), lambda: torch.load(io.BytesIO(good.torch_pickle)),
                 lambda: os.system("true")):
        with pytest.raises(Trapped):
            call()
    assert trap == ["pickle.loads", "torch.load", "os.system"]
    trap.clear()


def test_fuzz_weights_bytes(good):
    run_family(good, "weights_bytes", weights_bytes_cases(good), 300,
               explicit=[Case("pickle calling os.system as model.safetensors", good.config, EVIL_PICKLE)])


def test_fuzz_weights_header(good):
    text = json.dumps(good.header).replace('"shape": [2]', '"shape": [' + "9" * 5000 + "]", 1).encode()
    text += b" " * (-len(text) % 8)
    extra = dict(good.header, **{"evil\nname": good.header["policy.bias"]})
    extra_text = json.dumps(extra).encode()
    extra_text += b" " * (-len(extra_text) % 8)
    run_family(good, "weights_header", header_cases(good), 450,
               explicit=[Case("policy.bias shape = [<5000-digit integer>]", good.config,
                              struct.pack("<Q", len(text)) + text + good.data),
                         Case("add tensor 'evil\\nname' (a copy of policy.bias's entry)", good.config,
                              struct.pack("<Q", len(extra_text)) + extra_text + good.data)])


def test_fuzz_valid_weights_load(good):
    run_family(good, "weights_valid", reencoded_cases(good), 80, must_load=True)


def test_fuzz_consistent_networks_load_and_act(good):
    run_family(good, "consistent", network_specs, 60, must_load=True, build=lambda spec: consistent_case(good, spec))


def test_mlp_without_hidden_layers_is_refused(good, tmp_path):
    """Found by this fuzzer: hidden=[] with matching weights loaded an agent that could not act."""
    config = json.loads(good.config)
    config["network"]["trunk"]["hidden"] = []
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(good.weights)
    with pytest.raises(equirl.LoadError, match="network.trunk.hidden must be 1 to 16 widths"):
        equirl.load(tmp_path)


def test_fuzz_config_json(good):
    def edited(change) -> bytes:
        config = copy.deepcopy(good.config_obj)
        change(config)
        return json.dumps(config).encode()

    run_family(good, "config_json", config_json_cases(good), 450, explicit=[
        Case("seed = <5000-digit integer>", good.config.replace(b'"seed": 0', b'"seed": ' + b"9" * 5000),
             good.weights),
        Case("hyperparameters.gamma = 10**400", edited(lambda c: c["hyperparameters"].update(gamma=10**400)),
             good.weights),
        Case("add hyperparameters.'x\\ny' = 1", edited(lambda c: c["hyperparameters"].update({"x\ny": 1})),
             good.weights),
        Case("add env.'x\\ny' = 1", edited(lambda c: c["env"].update({"x\ny": 1})), good.weights),
    ])


def test_fuzz_config_bytes(good):
    run_family(good, "config_bytes", config_bytes_cases(good), 220)


def test_fuzz_declared_sizes(good):
    choices = [(path, value) for path, values in SIZE_FIELDS for value in values]
    run_family(good, "declared_sizes", st.sampled_from(choices), len(choices), build=lambda c: size_case(good, c))


def test_fuzz_covered_enough():
    """At least MIN_REPOS distinct mutated repos went through load() (when the whole file ran)."""
    if not FAMILIES:
        pytest.skip("no fuzz family ran in this session: run the whole file")
    summary = {name: (f.run, len(f.repos), f.loaded, f.refused) for name, f in FAMILIES.items()}
    print("family: (examples, distinct mutated repos, loaded, refused)", summary,
          f"wall {time.perf_counter() - STATE['t_start']:.1f} s")
    for name, family in FAMILIES.items():
        assert family.run >= min(EXPECTED[name], 50), f"{name}: only {family.run} examples ran"
    if set(FAMILIES) >= {"weights_bytes", "weights_header", "weights_valid", "consistent", "config_json",
                         "config_bytes", "declared_sizes"}:
        total = sum(len(f.repos) for f in FAMILIES.values())
        assert total >= MIN_REPOS, f"only {total} distinct mutated repos were loaded: {summary}"
        assert sum(f.loaded for f in FAMILIES.values()) > 0 and sum(f.refused for f in FAMILIES.values()) > 0


def test_fuzz_memory_stayed_bounded():
    if "rss_start_kb" not in STATE:
        pytest.skip("no fuzz family ran in this session")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - STATE["rss_start_kb"]) / 1024
    print(f"peak RSS grew by {grown_mb:.0f} MB while fuzzing")
    assert grown_mb < RSS_LIMIT_MB, f"peak RSS grew by {grown_mb:.0f} MB while fuzzing"
