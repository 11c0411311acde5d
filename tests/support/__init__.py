"""Helpers shared by the test modules: synthetic data, tiny run folders, stand-in networks."""
