"""asv benchmarks for fastnn: one bench_*.py per subject, shared pieces in common.py."""
