"""The tests' helpers, imported by name (`from support.jobs import manifest`: pytest puts tests/ on sys.path)."""
