"""The four SCoRe services (coordinator, student, teacher, trainer) and the `score` CLI."""
