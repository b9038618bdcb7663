"""Domain code of the uploads function, in packages by capability (README, "Layout").

Lower layers never import higher ones: platform, then media, uploads, limits, api, webhooks. Each package's
`FACE` names the modules another package may import; the rest are its own. lib/wiring.py and lib/admin/
compose the packages (the function's parts, the ops CLI); tests/test_layout.py holds all of this.
"""
