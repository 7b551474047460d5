"""Plugins that tests load into real ``agentd serve`` processes (``server.plugins``)."""
