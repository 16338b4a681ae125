"""The teacher service: locates the first critical error, writes the corrected step, judges answers and steps."""
