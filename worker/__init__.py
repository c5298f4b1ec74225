"""The sync worker: the queue (Celery app, tasks, publishers, broker), the pure sync engine, the
sides it syncs, and storage.

One webhook, from HTTP to its ledger row, in five files: webhooks/receiver.py (verify, store,
queue) -> worker/queue/tasks.py (process_deliveries: runs counted, one transaction) ->
worker/sync/forward.py (the runner: load, decide, carry out, record) -> worker/engine/decide.py
(every decision, pure) -> worker/targets/local.py (the ticket changed in that transaction).
The README's Layout section names the one-job calls on the way.
"""
