"""Executors run the same stages: Ray Data streaming (default) or one process in sequence."""
