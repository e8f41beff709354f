"""Workloads: the pure compute cores that fog tasks run (k-mer counting, rendering)."""
