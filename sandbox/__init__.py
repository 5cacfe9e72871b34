"""Where agent code runs: backends (process, docker), the in-sandbox runner, limits.

Plain Python: nothing here imports Django. Entry points: `get_backend(config=...)` and
`limits_for(manifest, config=...)`, given the server's settings as a `SandboxConfig`
(`core.sandbox_settings.sandbox_config()` reads them); the interface is in `sandbox.base`.
"""

from sandbox.backends import get_backend
from sandbox.limits import limits_for

__all__ = ["get_backend", "limits_for"]
