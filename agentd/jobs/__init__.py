"""Background work: the Responses API's jobs on a queue in the store (Redis Streams, or
in process without Redis), the consumers every worker runs, and webhooks."""
