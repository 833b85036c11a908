"""Critical-finding notifications: a webhook (JSON, Slack or Teams body) and e-mail, retried from the database.

The pipeline calls ``queue_for_job`` in the transaction that flags a job; the scheduler calls ``notify_due``.
"""

from triage_node.notify.channels import NotificationError
from triage_node.notify.dispatch import Backoff, NotificationState, notify_due, queue_for_job, webhook_channel

__all__ = ["Backoff", "NotificationError", "NotificationState", "notify_due", "queue_for_job", "webhook_channel"]
