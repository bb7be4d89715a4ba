"""Shared test setup: the models in tests are tiny, where one intra-op thread is fastest."""

import os

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)

# The commands' default --precision auto times the model once per machine and model: tests
# that are not about precision run the fp32 reference (tests/test_precision.py covers auto).
os.environ.setdefault("MOFME_PRECISION", "fp32")
