"""Trait shards: finding them, validating them against Together's formats (in two processes for large
ones), and the held-out split.
"""
