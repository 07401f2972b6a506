"""Defaults several layers share, declared once (imports nothing, so every layer may use them)."""

# The allowed error (s) between a frame's timestamp and frame_index / fps: lerobot's own
# (LeRobotDataset(tolerance_s=1e-4)), used by training, conversion, the dataset checks and leakage.
TOLERANCE_S = 1e-4
