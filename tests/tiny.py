"""Shared test constants (imported by the test modules; pytest puts tests/ on sys.path)."""

# A very small network: the training loop is under test, not the architecture.
TINY_MODEL = {
    "preset": "tiny",
    "dim": 32,
    "depth": 1,
    "num_experts": 4,
    "heads": 2,
    "head_dim": 16,
    "head_channels": 8,
    "unpatch_channels": 16,
}
