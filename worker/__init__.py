"""The sync worker: the queue (Celery app, tasks, publishers, broker), the pure sync engine, the
sides it syncs, and storage."""
