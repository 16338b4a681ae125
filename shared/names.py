"""The one spelling of a safe name: job, session and run ids, run names, checkpoint names.

A letter or digit, then up to 63 letters, digits, `.`, `_` or `-`: safe as a path component (no `/`, never `.` or
`..`), as a Redis key part and in a URL path, so every place that turns a name into one of those accepts the same set.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
SAFE_NAME = re.compile(rf"^{NAME_PATTERN}$")
