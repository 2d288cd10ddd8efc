"""What a run hands on: per-run records, the summary, the mapping for stage 3, the dashboard's report
and stage 3's intake.
"""
