import pytest
import torch

# One intra-op thread: the tiny networks of the tests run faster without thread hand-offs, and
# fixed-seed results (the learning tests) do not depend on how many cores the machine has.
torch.set_num_threads(1)


def _spy_on_replays(monkeypatch, network_class) -> list[bool]:
    """A list that gets, for every ``network_class.forward_replayed`` call from then on, whether
    the update replayed acting's recorded pass (True) or fell back to a fresh forward (False)."""
    used: list[bool] = []
    original = network_class.forward_replayed

    def spy(network, *args):
        out = original(network, *args)
        used.append(out is not None)
        return out

    monkeypatch.setattr(network_class, "forward_replayed", spy)
    return used


@pytest.fixture
def replay_uses(monkeypatch):
    """ActorCriticNetwork's replays (see _spy_on_replays)."""
    from equirl.agents.networks import ActorCriticNetwork

    return _spy_on_replays(monkeypatch, ActorCriticNetwork)


@pytest.fixture
def q_replay_uses(monkeypatch):
    """QNetwork's replays (see _spy_on_replays)."""
    from equirl.agents.networks import QNetwork

    return _spy_on_replays(monkeypatch, QNetwork)


class TrunkCalls:
    """Counts forward passes through Nature CNN trunks."""

    def __init__(self, monkeypatch):
        from equirl.agents.networks import NatureCNN

        self.calls = 0
        original = NatureCNN.forward

        def counted(module, obs):
            self.calls += 1
            return original(module, obs)

        monkeypatch.setattr(NatureCNN, "forward", counted)


@pytest.fixture
def trunk_calls(monkeypatch) -> TrunkCalls:
    return TrunkCalls(monkeypatch)
