"""Shared test setup: the models in tests are tiny, where one intra-op thread is fastest."""

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
