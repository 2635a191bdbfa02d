"""Benchmarks: the trainer against the tutorial's own script, measured side by side.

``make bench`` (or ``python -m bench``) runs every measurement in its own subprocess, alternating
the variants round by round, and writes ``bench/results/<date>.json`` plus a Markdown table.
See docs/benchmarks.md for the method and the committed results.
"""
