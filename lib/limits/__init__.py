"""Per-workspace limits (creates per minute, pending uploads) and failed authentications per address, counted in
Redis by every instance, kept per instance while it is down and rebuilt from Firestore after.

It decides admit or refuse; lib/api asks it before a create and tells it when a pending slot frees.
"""

FACE = ("counters", "quotas")
