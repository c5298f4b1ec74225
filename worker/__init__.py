"""The sync worker: Celery app and tasks, the pure sync engine, the sides it syncs, and storage."""
