"""Telling workspaces what became of their uploads: endpoints and their secrets, fan-out and signed delivery,
the attempt log, and the SSRF rules every target URL and address passes.

It decides who is told, when and how often; the event's `data` is the API's view of the upload (lib/api).
"""

FACE = ("attempts", "endpoints", "fanout", "messages", "pushes", "targets")
