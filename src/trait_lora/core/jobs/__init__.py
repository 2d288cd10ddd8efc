"""One paid job per change: job keys, the ledger, job statuses, the model's limits, the cost gate and
the plan of a run.
"""
