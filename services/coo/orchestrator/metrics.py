"""The orchestrator's metrics: missions, admission, retention, the dead-letter queue.

Registered in the process that imports this module (the orchestrator service): no other service exports
them. Names follow Prometheus conventions (``_total``, ``_seconds``, base units); labels are bounded.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from coo.common.metrics import LONG_BUCKETS

DLQ_MESSAGES = Gauge("coo_dlq_messages", "Messages in the dead-letter stream")
MISSIONS = Counter("coo_missions_total", "Missions that reached a final status", ["status"])
MISSIONS_STARTED = Counter("coo_missions_started_total", "Missions submitted")
MISSIONS_ACTIVE = Gauge("coo_missions_active", "Missions in a live state", ["status"])
MISSION_SECONDS = Histogram("coo_mission_duration_seconds", "Mission wall time from creation to final status",
                            ["status"], buckets=LONG_BUCKETS)
MISSION_RETRIES = Counter("coo_mission_retries_total", "Engineer retries after a failed QA verdict")
QA_OVERRULED = Counter("coo_qa_overruled_total",
                       "QA verdicts that passed a run without evidence of success (red or no test), overruled",
                       ["model"])
BACKPRESSURE = Counter("coo_backpressure_pauses_total", "Missions hard-paused by backpressure")
ADMISSION_REFUSED = Counter("coo_missions_refused_total", "Missions refused at admission", ["reason"])
MISSIONS_KEPT = Gauge("coo_missions_finished_kept", "Finished missions in the missions bucket (what retention bounds)")
MISSIONS_DELETED = Counter("coo_missions_deleted_total", "Finished missions deleted by retention")
