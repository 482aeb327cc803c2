"""Synthetic data generation (the paper's task taxonomy) and labeled-data loaders, on Ray Data."""
