"""The docs site: its generated pages and pictures (generate.py, svg.py)."""
