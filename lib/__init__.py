"""Domain code of the uploads function: one module per concern (see README)."""
