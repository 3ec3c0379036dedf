import torch

# One intra-op thread: the tiny networks of the tests run faster without thread hand-offs, and
# fixed-seed results (the learning tests) do not depend on how many cores the machine has.
torch.set_num_threads(1)
