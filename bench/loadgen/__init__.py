"""The Python load generator (HTTP closed and open loop, WebSocket turns and idle)."""
