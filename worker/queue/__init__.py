"""How work reaches the broker and the workers: the Celery app (celery_app), the tasks (tasks),
the publishers (publish, and redis_queue for a plain Redis broker), the embedded broker
(embedded_broker) and the names of the tasks (task_names).

The web process may import every module here but tasks: task_names and publish (with what
publish uses: redis_queue, celery_app for the app's settings, embedded_broker) import no
engine, so queueing a job by its name loads no sync code. Keep it so;
tests/webhooks/test_task_names.py checks it. tasks (the worker's side) imports the engine.
This file imports nothing, so that importing one module of the package loads no other.
"""
