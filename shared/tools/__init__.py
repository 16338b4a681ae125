"""Sandboxed tools the agent calls: the Python interpreter and search."""
