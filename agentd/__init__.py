"""agentd: an async, single-binary, high-throughput server for AI agents."""

__version__ = "0.1.0"
