"""Test helpers shared across the test suite (fake nnU-Net datasets and the like)."""
