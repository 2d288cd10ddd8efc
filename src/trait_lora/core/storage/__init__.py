"""Where records live and how they are written: atomic files, locked JSON records, the layout of the
output location.
"""
