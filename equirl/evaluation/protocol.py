"""The evaluation protocol as data, the env it means, and human-normalized scores.

A :class:`Protocol` plus the :class:`~equirl.zoo.envs.EnvSpec` it was applied to is everything
needed to re-run an evaluation: both go into ``results.json``, and ``equirl evaluate --verify``
rebuilds the same episodes from them.

The conventions (Mnih et al. 2015; Machado et al. 2018): Atari episodes are full games over all
lives, scored with the raw game score, with up to 30 no-op actions at reset and a cap of
108,000 emulator frames (30 minutes of play); sticky actions follow the env id (``ALE/*-v5``:
0.25, ``*NoFrameskip-v4``: none) unless overridden, and the value used is always recorded.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..agents.base import dataclass_from_dict
from ..zoo.envs import EnvSpec, spec_from_id

MAX_SEED = 2**31 - 1  # the emulators take 32-bit seeds
MAX_EPISODES = 1000  # all episodes run at once, one env each: a bound a stored protocol cannot exceed


class ProtocolError(ValueError):
    """A protocol setting that cannot be used, with the reason."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Protocol:
    """How an agent is evaluated. Episode ``i`` is played from seed ``seed + i``."""

    episodes: int = 30
    seed: int = 0
    greedy: bool = True
    """Act with the policy's mode; False samples actions from it (seeded, so still reproducible)."""
    sticky: float | None = None
    """Sticky-action probability (Atari); None follows the env id (v5: 0.25, NoFrameskip-v4: 0)."""
    noop_max: int = 30
    """Up to this many no-op agent steps at reset, their number drawn from the episode's seed (Atari)."""
    max_frames: int = 108_000
    """Emulator frames after which an episode is truncated (Atari)."""
    full_game: bool = True
    """Episodes end at game over. False ends them at each lost life: only for comparing with
    per-life numbers published elsewhere, never the standard."""

    def __post_init__(self) -> None:
        if not _is_int(self.episodes) or not 1 <= self.episodes <= MAX_EPISODES:
            raise ProtocolError(f"episodes must be an integer from 1 to {MAX_EPISODES}, got {self.episodes!r}")
        if not _is_int(self.seed) or not 0 <= self.seed or self.seed + self.episodes - 1 > MAX_SEED:
            raise ProtocolError(f"seed must be an integer with 0 <= seed and seed + episodes - 1 <= {MAX_SEED}, "
                                f"got seed {self.seed!r} with {self.episodes} episodes")
        if self.sticky is not None and not (isinstance(self.sticky, (int, float)) and not isinstance(self.sticky, bool)
                                            and 0.0 <= self.sticky <= 1.0):
            raise ProtocolError(f"sticky-action probability must be in [0, 1], got {self.sticky!r}")
        if not _is_int(self.noop_max) or self.noop_max < 0:
            raise ProtocolError(f"noop_max must be a non-negative integer, got {self.noop_max!r}")
        if not _is_int(self.max_frames) or self.max_frames < 1:
            raise ProtocolError(f"max_frames must be a positive integer, got {self.max_frames!r}")
        for name in ("greedy", "full_game"):
            if not isinstance(getattr(self, name), bool):
                raise ProtocolError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def policy_mode(self) -> str:
        return "greedy" if self.greedy else "stochastic"

    def episode_seeds(self) -> list[int]:
        """The seed of each episode. Both of equirl's vector envs (ale-py's and Gymnasium's)
        seed sub-env ``i`` with ``seed + i`` when reset with an integer ``seed``, and every
        sub-env plays exactly one episode, so these are the seeds of the episodes."""
        return [self.seed + i for i in range(self.episodes)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Protocol:
        return dataclass_from_dict(cls, data, ProtocolError, "protocol")

    def env_spec(self, base: EnvSpec | str) -> EnvSpec:
        """The spec to evaluate on: ``base`` (a recorded spec, or an id as
        :func:`~equirl.zoo.envs.spec_from_id` reads it today) with this protocol applied.

        Evaluation always scores the raw reward, so ``reward_clipping`` is False whatever the
        agent trained on (the vector env itself never clips; the flag is for the training loop).
        """
        spec = spec_from_id(base) if isinstance(base, str) else EnvSpec.from_dict(base.to_dict())  # a copy
        spec.reward_clipping = False
        if spec.kind != "atari":
            if self.sticky is not None:
                raise ProtocolError(f"sticky actions are an Atari setting; {spec.env_id!r} has none")
            return spec
        spec.ale["episodic_life"] = not self.full_game
        spec.ale["noop_max"] = self.noop_max
        spec.ale["max_num_frames_per_episode"] = self.max_frames
        if self.sticky is not None:
            spec.ale["repeat_action_probability"] = float(self.sticky)
        return spec


# ---- human-normalized score --------------------------------------------------------------

HUMAN_REFERENCE = ("Atari-57 random and human scores of Badia et al. 2020 (Agent57), "
                   "also in DeepMind's dqn_zoo atari_data.py")
"""Which table :data:`HUMAN_REFERENCE_SCORES` is; printed with every normalized score."""

# (random, human) per ALE game name, as tabulated by Badia et al. 2020 and dqn_zoo: average raw
# full-game scores with up to 30 no-op starts and the 108,000-frame cap, of uniformly random
# actions and of a professional game tester. Older papers normalized with the DQN Nature 2015
# table, whose human column differs for some games (Pong 9.3, Breakout 31.8): always compare
# normalized scores from the same table.
HUMAN_REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "alien": (227.8, 7127.7), "amidar": (5.8, 1719.5), "assault": (222.4, 742.0),
    "asterix": (210.0, 8503.3), "asteroids": (719.1, 47388.7), "atlantis": (12850.0, 29028.1),
    "bank_heist": (14.2, 753.1), "battle_zone": (2360.0, 37187.5), "beam_rider": (363.9, 16926.5),
    "berzerk": (123.7, 2630.4), "bowling": (23.1, 160.7), "boxing": (0.1, 12.1),
    "breakout": (1.7, 30.5), "centipede": (2090.9, 12017.0), "chopper_command": (811.0, 7387.8),
    "crazy_climber": (10780.5, 35829.4), "defender": (2874.5, 18688.9), "demon_attack": (152.1, 1971.0),
    "double_dunk": (-18.6, -16.4), "enduro": (0.0, 860.5), "fishing_derby": (-91.7, -38.7),
    "freeway": (0.0, 29.6), "frostbite": (65.2, 4334.7), "gopher": (257.6, 2412.5),
    "gravitar": (173.0, 3351.4), "hero": (1027.0, 30826.4), "ice_hockey": (-11.2, 0.9),
    "jamesbond": (29.0, 302.8), "kangaroo": (52.0, 3035.0), "krull": (1598.0, 2665.5),
    "kung_fu_master": (258.5, 22736.3), "montezuma_revenge": (0.0, 4753.3), "ms_pacman": (307.3, 6951.6),
    "name_this_game": (2292.3, 8049.0), "phoenix": (761.4, 7242.6), "pitfall": (-229.4, 6463.7),
    "pong": (-20.7, 14.6), "private_eye": (24.9, 69571.3), "qbert": (163.9, 13455.0),
    "riverraid": (1338.5, 17118.0), "road_runner": (11.5, 7845.0), "robotank": (2.2, 11.9),
    "seaquest": (68.4, 42054.7), "skiing": (-17098.1, -4336.9), "solaris": (1236.3, 12326.7),
    "space_invaders": (148.0, 1668.7), "star_gunner": (664.0, 10250.0), "surround": (-10.0, 6.5),
    "tennis": (-23.8, -8.3), "time_pilot": (3568.0, 5229.2), "tutankham": (11.4, 167.6),
    "up_n_down": (533.4, 11693.2), "venture": (0.0, 1187.5), "video_pinball": (16256.9, 17667.9),
    "wizard_of_wor": (563.5, 4756.5), "yars_revenge": (3092.9, 54576.9), "zaxxon": (32.5, 9173.3),
}


def human_normalized(spec: EnvSpec, score: float) -> float | None:
    """``(score - random) / (human - random)`` for an Atari game in the reference table, else None."""
    if spec.kind != "atari":
        return None
    reference = HUMAN_REFERENCE_SCORES.get(spec.ale["game"])
    if reference is None or not math.isfinite(score):
        return None
    random, human = reference
    return (score - random) / (human - random)
