"""Background work: the Responses API's jobs on a queue in the store (Redis Streams, or
in process without Redis), the consumers every worker runs, and webhooks.

- ``service``: the Responses API's logic (create, look up, follow, cancel, delete) and
  the running of one response's turn, for the request path and for jobs alike.
- ``records``: a response's record read as a view, and the fields its result writes.
- ``answers``: the tool calls a response's turn answers before the model runs.
- ``runner``: the consumer: reads and reclaims the partitions' queues, holds each job
  it takes by renewing its delivery, and hands the rest back when the worker drains.
- ``partitions``: a partition's places for jobs in this worker, and its pace while the
  worker serves people.
- ``attempt``: one attempt of one job, from its start on the record to the result, the
  webhook and the acknowledgement (or a retry, or the dead letters).
- ``webhooks``: signing and delivering the webhook of an ended response.
- ``dead_letters``: the operator's side: each partition's figures, and dead letters
  listed, queued again or discarded.

The queue and the records themselves are the store's (``agentd.store.api``: ``Queue``
and ``Records``).
"""
