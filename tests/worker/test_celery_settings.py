"""The broker settings the reliability promises rest on, asserted."""
from __future__ import annotations

from config.settings import load
from worker.queue.celery_app import MAX_TASK_DELAY_SECONDS, celery_config, max_task_delay
from worker.sync.deliveries import MAX_RUNS
from worker.queue.tasks import MAX_RETRIES, _backoff, process_delivery, push_link


def test_tasks_are_acknowledged_late_and_handed_back_when_a_worker_dies(tmp_path):
    conf = celery_config(load({"REDIS_URL": "redis://127.0.0.1:6379/0", "BBSYNC_VAR_DIR": str(tmp_path)}))
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1


def test_visibility_timeout_outlasts_any_countdown_or_retry_delay(tmp_path):
    for env in ({}, {"BBSYNC_VISIBILITY_TIMEOUT": "9"}):
        settings = load({"REDIS_URL": "redis://127.0.0.1:6379/0", "BBSYNC_VAR_DIR": str(tmp_path), **env})
        conf = celery_config(settings)
        assert conf["broker_transport_options"]["visibility_timeout"] > max_task_delay(settings)
        assert max_task_delay(settings) <= MAX_TASK_DELAY_SECONDS
    assert all(_backoff(n) <= MAX_TASK_DELAY_SECONDS for n in range(MAX_RETRIES + 5))


def test_retries_are_bounded_and_a_poison_task_is_dead_lettered():
    assert process_delivery.max_retries == MAX_RETRIES and push_link.max_retries == MAX_RETRIES
    assert 0 < MAX_RETRIES < MAX_RUNS  # redeliveries after crashes count too, then stop


def test_embedded_broker_needs_no_server_and_keeps_its_files_under_var(tmp_path):
    conf = celery_config(load({"BBSYNC_VAR_DIR": str(tmp_path)}))
    assert conf["broker_url"] == "filesystem://"
    options = conf["broker_transport_options"]
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        assert options[key].startswith(str(tmp_path))


def test_beat_runs_the_cheap_issue_pass_often_and_the_comment_passes_rarely():
    from worker.queue.celery_app import BEAT_SCHEDULE
    from worker.sync.reconcile import COMMENT_MODES
    from worker.queue.tasks import reconcile_all
    passes = {e["kwargs"]["comments"]: e["schedule"] for e in BEAT_SCHEDULE.values()
              if e["task"] == reconcile_all.name}
    assert set(passes) <= set(COMMENT_MODES)
    # Issues only (one call per ~100 changed issues) every 5 minutes; the per-issue comment
    # listings hourly (touched issues) and daily (every linked issue).
    assert passes == {"none": 300.0, "changed": 3600.0, "all": 86400.0}
