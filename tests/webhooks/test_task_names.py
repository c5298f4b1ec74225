"""The web process queues tasks by name without importing the engine."""
from __future__ import annotations

import subprocess
import sys

from worker.queue import task_names


def test_the_web_app_and_its_publisher_import_no_task_module():
    # Nor the escalation's runner or a Bitbucket client: no request may call Bitbucket.
    code = ("import sys, webhooks; webhooks.create_app(); from worker.queue import publish; "
            "publish.messages([('process_delivery', 'a'), ('process_delivery', 'b'), ('push_link', 3), "
            "('escalate', 4)]); "
            "print(sorted(m for m in sys.modules"
            " if m in ('worker.queue.tasks', 'worker.sync.forward', 'worker.sync.push',"
            " 'worker.sync.escalate', 'worker.sync.clients', 'worker.bitbucket.client')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_name_is_a_registered_task_that_takes_the_job():
    from worker.queue.celery_app import app
    from worker.queue import tasks
    names = {task_names.PROCESS_DELIVERY, task_names.PROCESS_DELIVERIES, task_names.PUSH_LINK,
             task_names.ESCALATE}
    assert names <= set(app.tasks)
    for job, name in task_names.BY_JOB.items():
        assert tasks.ENQUEUEABLE[job].name == name
