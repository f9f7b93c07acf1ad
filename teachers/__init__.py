"""Teacher backends (DESIGN.md §3): one module per model, a small common interface, a registry.

A teacher loads once in `__init__` and labels a batch in `predict`; it knows nothing about Ray
or Parquet. The backends arrive with the teachers issue.
"""
