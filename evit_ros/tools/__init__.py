"""Measurement and maintenance scripts (not imported by the node)."""
