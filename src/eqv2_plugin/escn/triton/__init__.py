"""Triton implementation of the eSCN hot path (imported only when selected)."""
