"""Tools the agent calls from the sandbox, kept outside it: search."""
