"""Counts of fuzzed inputs, shared by tests/test_fuzz.py and the summary hook in tests/conftest.py."""
from collections import Counter

COUNT: Counter = Counter()
