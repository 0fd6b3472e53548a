"""Investigations behind the product's defaults; the chronological log is research/NOTEBOOK.md.

Each module runs as ``python -m research.NAME`` from the repository root. The
product (adapt/, streamer/, crowdwatch/) never imports this package.
"""
