"""Processes: the supervisor, its workers, the listening sockets and systemd's notify protocol."""
