"""The names of the tasks that the web process and the CLI queue, by the job each does.

Kept apart from worker.queue.tasks so that queueing work imports no engine: the web process needs
only a task's name to publish its message.
"""
PROCESS_DELIVERY = "bbsync.process_delivery"
PROCESS_DELIVERIES = "bbsync.process_deliveries"
PUSH_LINK = "bbsync.push_link"
ESCALATE = "bbsync.escalate"

#: A job, as the dispatcher and `enqueue` take it ("process_delivery", id), -> its task's name.
BY_JOB = {"process_delivery": PROCESS_DELIVERY, "push_link": PUSH_LINK, "escalate": ESCALATE}
