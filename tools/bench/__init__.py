"""The benchmarks' shared machinery and their suites; tools/benchmark.py is the entry point."""
