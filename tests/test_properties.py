from fuzzcache.testing import test_property  # noqa: F401  (every registered property, on --fuzzcache-target)
