"""Fault tests: the real ``potluck engine`` process, killed, disconnected from, cut off from its Hub.

They reuse the service tests' launcher (``tests/service/potluck_process.py``); each module starts
its own engine, because each one breaks it in its own way.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent / "service"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
