"""replay.mp4: a full Atari game at native size, decoded back and counted; failures are loud."""
from __future__ import annotations

import stat

import imageio_ffmpeg
import numpy as np
import pytest
from test_evaluation import BreakoutTracker, ConstantAgent

from equirl.evaluation import video
from equirl.evaluation.evaluate import evaluate
from equirl.evaluation.video import VideoError, check_video, record


def decode(path) -> tuple[dict, list[np.ndarray]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return meta, [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]


def test_breakout_game_is_recorded_at_native_size(tmp_path):
    out = tmp_path / "replay.mp4"
    summary = record(BreakoutTracker(), "BreakoutNoFrameskip-v4", out, seed=0)
    meta, frames = decode(out)
    # One frame at reset and one per agent step, 210x160 RGB, 60 Hz / frameskip 4 = 15 fps.
    assert summary.game_over and summary.frames == summary.steps + 1
    assert len(frames) == summary.frames
    assert {f.shape for f in frames} == {(210, 160, 3)}
    assert meta["codec"] == "h264" and meta["fps"] == 15.0 and meta["pix_fmt"].startswith("yuv420p")
    assert (summary.width, summary.height, summary.fps) == (160, 210, 15.0)
    # The recorded game is the evaluated one: same seed, same raw score, same length.
    evaluated = evaluate(BreakoutTracker(), "BreakoutNoFrameskip-v4", episodes=1, seed=0)
    assert (summary.score, summary.steps) == (evaluated.scores[0], evaluated.lengths[0])
    assert frames[0].std() > 0 and not np.array_equal(frames[0], frames[-1])  # real pictures
    assert out.stat().st_mode & stat.S_IRGRP  # a normal file's mode, not mkstemp's private one
    assert [p.name for p in tmp_path.iterdir()] == ["replay.mp4"]  # no temporary file left


def test_steps_cap_cuts_the_game(tmp_path):
    summary = record(BreakoutTracker(), "ALE/Breakout-v5", tmp_path / "short.mp4", max_steps=20, seed=3)
    assert not summary.game_over and summary.steps == 20
    assert len(decode(tmp_path / "short.mp4")[1]) == 21


def test_encoder_failure_raises_and_leaves_no_file(tmp_path, monkeypatch):
    from moviepy.video.io import ffmpeg_writer

    real = ffmpeg_writer.FFMPEG_VideoWriter

    def broken_codec(*args, **kwargs):
        kwargs["codec"] = "no_such_codec"
        return real(*args, **kwargs)

    monkeypatch.setattr(ffmpeg_writer, "FFMPEG_VideoWriter", broken_codec)
    out = tmp_path / "replay.mp4"
    with pytest.raises(VideoError, match="ffmpeg"):
        record(BreakoutTracker(), "BreakoutNoFrameskip-v4", out, max_steps=30)
    assert list(tmp_path.iterdir()) == []


def test_undecodable_file_is_detected(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(VideoError):
        check_video(bad, 10, 160, 210)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="no data"):
        check_video(empty, 10, 160, 210)


def test_classic_env_renders_or_says_why(tmp_path):
    out = tmp_path / "cartpole.mp4"
    try:
        import pygame  # noqa: F401  (CartPole's renderer)
    except ImportError:
        with pytest.raises(VideoError, match="pygame"):
            record(ConstantAgent(0), "CartPole-v1", out, max_steps=10)
        assert list(tmp_path.iterdir()) == []
        return
    summary = record(ConstantAgent(0), "CartPole-v1", out, max_steps=10)
    meta, frames = decode(out)
    assert len(frames) == summary.frames == summary.steps + 1
    assert frames[0].shape == (400, 600, 3) and meta["fps"] == 50.0


def test_odd_frame_sizes_are_padded_to_even(tmp_path):
    writer = video._Mp4Writer(tmp_path / "odd.mp4")
    writer.fps = 10.0
    for i in range(5):
        writer.write(np.full((7, 9, 3), 40 * i, dtype=np.uint8))
    writer.close()
    assert writer.size == (10, 8)
    check_video(tmp_path / "odd.mp4", 5, 10, 8)


def test_record_command_through_the_loader(tmp_path, capsys):
    from test_evaluation import cli

    from equirl.zoo.train import train

    run_dir = tmp_path / "pong"
    train("a3c", "ALE/Pong-v5", 80, seed=0, out=run_dir, device="cpu")  # one update: a loadable run folder
    out = tmp_path / "replay.mp4"
    assert cli(["record", str(run_dir), "--out", str(out), "--steps", "25", "--device", "cpu"]) == 0
    assert "26 frames, 160x210, 15 fps, H.264" in capsys.readouterr().out
    assert len(decode(out)[1]) == 26
