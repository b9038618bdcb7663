"""An upload from its session to its end: what it is called, its record and the one transition out of pending,
the GCS session and object, settling (the bytes checked against what was declared, then placed or refused),
storage events, and the sweep that settles whatever nobody else did.

It decides an upload's outcome; it does not know the API's shapes (lib/api renders the record) or who is told
(lib/webhooks announces what settling hands it).
"""

FACE = ("gcs_sessions", "lifecycle", "naming", "settling", "storage_events", "sweep")
