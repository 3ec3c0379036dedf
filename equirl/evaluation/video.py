"""``replay.mp4``: one full game at the native resolution, H.264, checked after writing.

Atari: the agent must see exactly what it saw in training (the 84x84 grayscale 4-frame stack
of ale-py's C++ vector env), and the video needs the 210x160 colour screen, which that env
does not expose. Rebuilding the preprocessing around Gymnasium's single ``AtariEnv``
(``AtariPreprocessing`` + ``FrameStackObservation``) would only approximate it: another resize,
another no-op RNG, no FIRE on reset, another stack padding. So the agent plays in the one env
builder's env (:func:`~equirl.zoo.envs.make_vector_env`, one sub-env), and a twin ale-py vector
env with the same ROM, seed and settings, except that it returns the colour screen at native size
(no grayscale, no resize, no stack), is stepped with the same actions. The emulator is
deterministic given seed and actions, so the twin plays the same game; every step checks that
rewards and episode ends agree, and a divergence is an error, never a wrong video.

Frames: one per agent step, as the agent's env produces them (with ``frameskip`` 4, every 4th
emulator frame, max-pooled with the frame before, so sprites the game draws on alternate frames
stay visible), at 60 / frameskip = 15 fps: the video plays at the game's real speed.
Other envs: ``gym.make(env_id, render_mode="rgb_array")``, one rendered frame per step, at the
env's ``render_fps``.

Encoding goes through moviepy's ffmpeg writer (the ffmpeg binary of imageio-ffmpeg), streaming
frames instead of holding a whole game (up to 27,000 frames) in memory, into a temporary file
in the target folder. The file is then decoded and its frame count and size checked before it
is renamed to the real name: a failed encode raises :class:`VideoError` and leaves no file.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..zoo.envs import EnvSpec, make_vector_env
from .evaluate import check_fits, evaluation_spec, seeded_sampling
from .protocol import Protocol

ATARI_SCREEN = (210, 160)  # (height, width) of every Atari 2600 screen as ALE renders it
ATARI_HZ = 60  # NTSC frame rate of the emulator
DEFAULT_MAX_STEPS = 27_000  # 108,000 frames at frameskip 4: the evaluation cap


class VideoError(RuntimeError):
    """A video that could not be recorded or encoded, with the reason."""


@dataclass
class VideoSummary:
    path: Path
    frames: int
    fps: float
    width: int
    height: int
    steps: int  # agent steps played
    score: float  # raw game score of the recorded game
    game_over: bool  # False when --steps (or the env's cap) cut the game short
    seconds: float

    def describe(self) -> str:
        end = "full game" if self.game_over else f"cut at {self.steps} steps"
        return (f"{self.path}: {self.frames} frames, {self.width}x{self.height}, {self.fps:g} fps, H.264, "
                f"{self.frames / self.fps:.1f} s; score {self.score:g} ({end})")


class _Mp4Writer:
    """Frames to an H.264 mp4 through moviepy's ffmpeg writer, opened at the first frame."""

    def __init__(self, path: Path, name: Path | None = None):
        self.path = path
        self.name = name or path  # what messages call it: the final name, not the temporary one
        self.fps = 0.0  # set by the player before the first frame: the game's frame rate
        self.writer = None
        self.log = None
        self.size: tuple[int, int] | None = None  # (width, height) as encoded
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise VideoError(f"expected RGB frames of shape (height, width, 3), got {frame.shape}")
        # yuv420p, which every player decodes, needs even sides: repeat the last row/column.
        pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        if self.writer is None:
            self._open(frame.shape[1], frame.shape[0])
        elif (frame.shape[1], frame.shape[0]) != self.size:
            raise VideoError(f"frame {self.frames} is {frame.shape[1]}x{frame.shape[0]}, the video {self.size}")
        try:
            self.writer.write_frame(frame)
        except (OSError, TypeError, ValueError) as err:  # moviepy re-raises ffmpeg's failure as one of these
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise VideoError(f"ffmpeg failed while writing {self.name} ({first}): {self._log_tail()}") from None
        self.frames += 1

    def _log_tail(self) -> str:
        self.log.seek(0)
        lines = self.log.read().strip().splitlines()
        return lines[-1] if lines else "ffmpeg printed nothing"

    def _open(self, width: int, height: int) -> None:
        from moviepy.video.io.ffmpeg_writer import FFMPEG_VideoWriter

        if self.fps <= 0:
            raise VideoError(f"no frame rate set for {self.name}")
        self.size = (width, height)
        # ffmpeg's messages go to a file we can quote if encoding fails (text mode: moviepy
        # reads it back as str when a write fails).
        self.log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed in close/abort)
        self.writer = FFMPEG_VideoWriter(str(self.path), (width, height), self.fps, codec="libx264",
                                         logfile=self.log, ffmpeg_params=["-pix_fmt", "yuv420p",
                                                                          "-movflags", "+faststart"])

    def close(self) -> None:
        """Finish the file; raise VideoError if ffmpeg did not exit cleanly."""
        if self.writer is None:
            raise VideoError(f"no frame was recorded for {self.name}")
        proc = self.writer.proc
        self.writer.close()  # waits for ffmpeg to exit; moviepy does not check its exit status
        self.writer = None
        message = self._log_tail()
        self.log.close()
        if proc is not None and proc.returncode != 0:
            raise VideoError(f"ffmpeg exited with status {proc.returncode} while encoding {self.name}: {message}")

    def abort(self) -> None:
        """Stop ffmpeg after a failure elsewhere; the caller deletes the partial file."""
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                pass
            self.log.close()
            self.writer = None


def check_video(path: Path, frames: int, width: int, height: int, name: Path | None = None) -> None:
    """Decode ``path`` and check it holds ``frames`` H.264 frames of ``width`` x ``height``
    (``name``: what to call the file in errors)."""
    import imageio_ffmpeg

    name = name or path
    if not path.is_file() or path.stat().st_size == 0:
        raise VideoError(f"the encoder wrote no data to {name}")
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        decoded = sum(1 for _ in reader)
    except (RuntimeError, OSError, StopIteration) as err:
        raise VideoError(f"{name} cannot be decoded: {err}") from None
    if meta.get("codec") != "h264":
        raise VideoError(f"{name} is {meta.get('codec')}, not H.264")
    if tuple(meta.get("size", ())) != (width, height) or decoded != frames:
        raise VideoError(f"{name} decodes to {decoded} frames of {meta.get('size')}, "
                         f"but {frames} frames of {width}x{height} were written")


def record(agent: Any, spec: EnvSpec | str | None, out_path: str | Path, max_steps: int = DEFAULT_MAX_STEPS,
           seed: int = 0, greedy: bool = True) -> VideoSummary:
    """Play one game (at most ``max_steps`` agent steps) and write it to ``out_path`` as H.264.

    ``spec``: an env id, a recorded spec, or None for the agent's own env; the evaluation
    protocol is applied to it (full game over all lives, raw score, the env id's sticky actions).
    """
    if max_steps < 1:
        raise VideoError(f"--steps must be positive, got {max_steps}")
    out = Path(out_path)
    if out.suffix.lower() != ".mp4":
        raise VideoError(f"the video is H.264 in an mp4 file: name it *.mp4, not {out.name!r}")
    if not out.parent.is_dir():
        raise VideoError(f"folder {out.parent} does not exist")
    env_spec = Protocol(episodes=1, seed=seed, greedy=greedy).env_spec(evaluation_spec(agent, spec))
    start = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".partial.mp4", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = _Mp4Writer(tmp, out)
        play = _play_atari if env_spec.kind == "atari" else _play_gymnasium
        try:
            with seeded_sampling(agent, seed):
                steps, score, game_over = play(agent, env_spec, writer, max_steps, seed, greedy)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        width, height = writer.size
        check_video(tmp, writer.frames, width, height, out)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it private; give it a normal file's mode
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return VideoSummary(out, writer.frames, writer.fps, width, height, steps, score, game_over,
                        time.perf_counter() - start)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _play_atari(agent: Any, spec: EnvSpec, writer: _Mp4Writer, max_steps: int, seed: int,
                greedy: bool) -> tuple[int, float, bool]:
    from ale_py.vector_env import AtariVectorEnv

    settings = {k: v for k, v in spec.ale.items() if k != "game"}
    settings.update(grayscale=False, img_height=ATARI_SCREEN[0], img_width=ATARI_SCREEN[1], stack_num=1)
    writer.fps = ATARI_HZ / spec.ale["frameskip"]
    agent_env = make_vector_env(spec, 1)
    screen_env = None
    try:
        check_fits(agent, spec.env_id, agent_env.num_actions, agent_env.obs_info.shape)
        screen_env = AtariVectorEnv(spec.ale["game"], 1, autoreset_mode="SameStep", reward_clipping=False,
                                    **settings)
        obs = agent_env.reset(seed=seed)
        screens, _ = screen_env.reset(seed=seed)
        writer.write(screens[0, 0])
        score = 0.0
        for step in range(1, max_steps + 1):
            action = np.asarray(agent.act(obs, greedy=greedy), dtype=np.int64).reshape(1)
            played = agent_env.step(action)
            screens, rewards, terminated, truncated, info = screen_env.step(action)
            if (rewards[0] != played.rewards[0] or terminated[0] != played.terminated[0]
                    or truncated[0] != played.truncated[0]):
                raise VideoError(f"the screen env diverged from the agent's env at step {step} (reward "
                                 f"{rewards[0]} vs {played.rewards[0]}); the video would not show the agent's game")
            score += float(played.rewards[0])
            done = bool(terminated[0] or truncated[0])
            # Same-step autoreset: after the last step the env already shows the next game.
            writer.write(info["final_obs"][0, 0] if done else screens[0, 0])
            obs = played.obs
            if done:
                return step, score, bool(terminated[0])
        return max_steps, score, False
    finally:
        agent_env.close()
        if screen_env is not None:
            screen_env.close()


def _play_gymnasium(agent: Any, spec: EnvSpec, writer: _Mp4Writer, max_steps: int, seed: int,
                    greedy: bool) -> tuple[int, float, bool]:
    import gymnasium as gym

    # Off-screen rendering needs no display or sound device; without these SDL complains on stderr.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    env = gym.make(spec.env_id, render_mode="rgb_array", **spec.gym_kwargs)
    writer.fps = float(env.metadata.get("render_fps") or 30)
    try:
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise VideoError(f"{spec.env_id} has {env.action_space} actions; equirl's agents need Discrete ones")
        check_fits(agent, spec.env_id, int(env.action_space.n), tuple(env.observation_space.shape))
        obs, _ = env.reset(seed=seed)
        writer.write(_render(env, spec))
        score = 0.0
        for step in range(1, max_steps + 1):
            action = np.asarray(agent.act(np.asarray(obs)[None], greedy=greedy)).reshape(-1)[0]
            obs, reward, terminated, truncated, _ = env.step(int(action))
            score += float(reward)
            writer.write(_render(env, spec))
            if terminated or truncated:
                return step, score, bool(terminated)
        return max_steps, score, False
    finally:
        env.close()


def _render(env: Any, spec: EnvSpec) -> np.ndarray:
    from gymnasium.error import DependencyNotInstalled

    try:
        frame = env.render()
    except DependencyNotInstalled as err:
        raise VideoError(f"{spec.env_id} cannot render: {err}") from None
    if frame is None:
        raise VideoError(f"{spec.env_id} rendered no frame in rgb_array mode")
    return np.asarray(frame)
