"""What every room stands on and no room decides: settings, the backends' clients and their budgets, time, the
error envelope, the request log line, the HTTP server, OIDC tokens and Pub/Sub pushes.

It imports no other package of lib.
"""

FACE = ("clients", "clock", "config", "errors", "http", "logs", "oidc", "push", "server")
