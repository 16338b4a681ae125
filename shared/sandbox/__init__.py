"""The sandbox model code runs in: the Sandbox (sandbox.py), its child process (process.py, _sandbox_child.py),
the bwrap boundary (boundary.py), the host report (report.py) and the limits (limits.py, a leaf)."""
