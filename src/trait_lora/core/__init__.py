"""The pure core: everything every backend shares. Never imports Airflow, torch or the Together SDK."""
