"""Where agent code runs: backends (process, docker), the in-sandbox runner, limits.

Entry points: `get_backend()` and `limits_for()`; the interface is in `sandbox.base`.
"""

from sandbox.backends import get_backend
from sandbox.limits import limits_for

__all__ = ["get_backend", "limits_for"]
