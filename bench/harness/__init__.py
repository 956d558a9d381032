"""The benchmark harness: drivers for each system, the measurement phases, and the reports."""
