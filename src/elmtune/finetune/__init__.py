"""The training loop (loss as a parameter), losses, checkpoints and resume."""
