"""Baseline servers run beside agentd in the same benchmark run (see bench/README.md)."""
