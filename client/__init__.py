"""The upload command (`python -m client`): resumable, chunked uploads to
Framelane from a terminal or a script. Not part of the function's archive."""
