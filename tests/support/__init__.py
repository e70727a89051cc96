"""Test helpers: where the shared data is, the one way to compose an app's config, tiny runs, processes."""
