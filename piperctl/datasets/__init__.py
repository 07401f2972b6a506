"""Datasets piperctl writes or rewrites: synthesized PiPER data (and conversions)."""
