"""Task suites (the built-in procedural suite), expert solvers and task-file loading."""
