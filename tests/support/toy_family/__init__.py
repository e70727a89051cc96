"""A model family that lives only in the tests (a causal bag of words), to show that a family is closed: its
folder is all it takes to train, sample and resume it (tests/test_families.py)."""
