import pytest
import torch

# One intra-op thread: the tiny networks of the tests run faster without thread hand-offs, and
# fixed-seed results (the learning tests) do not depend on how many cores the machine has.
torch.set_num_threads(1)


@pytest.fixture
def replay_uses(monkeypatch):
    """A list that gets, for every ActorCriticNetwork.forward_replayed call from then on, whether
    the update replayed acting's recorded pass (True) or fell back to a fresh forward (False)."""
    from equirl.agents.networks import ActorCriticNetwork

    used: list[bool] = []
    original = ActorCriticNetwork.forward_replayed

    def spy(network, records, rows):
        out = original(network, records, rows)
        used.append(out is not None)
        return out

    monkeypatch.setattr(ActorCriticNetwork, "forward_replayed", spy)
    return used
