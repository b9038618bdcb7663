"""`make bench`: the request path measured beside its floor (see BENCHMARKS.md)."""
