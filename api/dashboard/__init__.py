"""The operator's dashboard: server-rendered pages under ``/dashboard``, live over SSE.

Every action goes through the same application commands and read-your-writes waits as the JSON
API, recorded with the actor ``admin``.
"""

from api.dashboard.routes import Dashboard, template_config

__all__ = ["Dashboard", "template_config"]
