"""The API's side: API keys, request and response models, creating an upload once per Idempotency-Key, and the
upload as the API shows it.

It decides what a request may do and what it is answered; main.py routes to it.
"""

FACE = ("auth", "create", "models", "views")
