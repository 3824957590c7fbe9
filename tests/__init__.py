"""The test suite; the helpers it shares with the benches live in testkit/ (not installed)."""
