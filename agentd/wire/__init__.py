"""The OpenAI wire formats agentd speaks: chat completions and their chunks
(:mod:`.chat`), the Responses API's create request, response object and events
(:mod:`.responses`), their errors (:mod:`.errors`) and server-sent event framing
(:mod:`.sse`). Pure: no I/O, no store; ``server`` and ``jobs`` render through it."""
