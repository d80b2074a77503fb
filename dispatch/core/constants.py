"""Names and limits shared by every part of Dispatch, in one place.

Environment-variable names, DynamoDB key prefixes and the AWS service limits the
framework enforces itself (the local emulator is more lenient than AWS, so the
limits are checked in our code, never left to the service).
"""

from __future__ import annotations

from typing import Final

# --- environment variables -------------------------------------------------
ENV_QUEUE_URL: Final = "DISPATCH_QUEUE_URL"
ENV_DLQ_URL: Final = "DISPATCH_DLQ_URL"
ENV_TABLE: Final = "DISPATCH_TABLE"
ENV_TASKS: Final = "DISPATCH_TASKS"
ENV_SIGNING_KEY: Final = "DISPATCH_SIGNING_KEY"  # comma-separated: the first signs, any verifies
ENV_RESOURCE_LIMITS: Final = "DISPATCH_RESOURCE_LIMITS"  # JSON: per-deployment resource limits
ENV_WAKE_FUNCTION: Final = "DISPATCH_WAKE_FUNCTION"  # responsive mode: the dispatcher to wake
AWAKE_KEY_PREFIX: Final = "awake#"  # awake#<queue name>: until when a dispatcher surely receives
MAX_LINGER_S: Final = 600.0  # the longest a dispatcher may keep receiving after its last task
ENV_REGION: Final = "AWS_REGION"
ENV_DEFAULT_REGION: Final = "AWS_DEFAULT_REGION"
ENV_ENDPOINT_URL: Final = "AWS_ENDPOINT_URL"

DEFAULT_REGION: Final = "us-east-1"

# --- the message envelope --------------------------------------------------
ENVELOPE_VERSION: Final = 1
# Ids of lean tasks (@task(track_state=False)) start with this: the id alone tells
# every reader (dispatcher, `dispatch status`, `dispatch cancel`) that no record is kept.
LEAN_TASK_ID_PREFIX: Final = "lean-"

# --- SQS limits --------------------------------------------------------------
SQS_MAX_MESSAGE_BYTES: Final = 1_048_576  # 1 MiB, body + message attributes
SQS_MAX_BATCH_ENTRIES: Final = 10
SQS_MAX_BATCH_BYTES: Final = 1_048_576  # the sum of a batch's message sizes
SQS_MAX_DELAY_S: Final = 900
SQS_MAX_VISIBILITY_S: Final = 43_200  # 12 hours
SQS_MAX_WAIT_S: Final = 20
# Room kept free in every message we enqueue so that the dead-letter copy (the
# same body plus failure attributes) still fits under the SQS limit.
DLQ_ATTRIBUTE_RESERVE_BYTES: Final = 16_384
MAX_ENVELOPE_BYTES: Final = SQS_MAX_MESSAGE_BYTES - DLQ_ATTRIBUTE_RESERVE_BYTES

# The queue's redrive policy is a safety net for poison messages only; it must
# stay above any task's max_attempts so that Dispatch's own retry decides first.
REDRIVE_MAX_RECEIVE_COUNT: Final = 100
MAX_ATTEMPTS_LIMIT: Final = 50

# --- micro-batch tasks (@task(batch_size=..., batch_window_s=...)) ------------
MAX_BATCH_SIZE: Final = 100  # items per handler call at most
DEFAULT_BATCH_WINDOW_S: Final = 1.0
MAX_BATCH_WINDOW_S: Final = 20.0  # a batch waits this long at most for its first item's company
# A batch closes before its items' bodies pass this, so it always fits one Lambda
# Invoke request (6 MB) with room for the per-item context.
MAX_BATCH_PAYLOAD_BYTES: Final = 5 * 1024 * 1024

# --- DynamoDB ------------------------------------------------------------------
TABLE_HASH_KEY: Final = "pk"
TABLE_TTL_ATTRIBUTE: Final = "expires_at"
DDB_MAX_BATCH_WRITE: Final = 25
DDB_MAX_BATCH_GET: Final = 100
TASK_KEY_PREFIX: Final = "task#"
BUCKET_KEY_PREFIX: Final = "bucket#"  # a shared token bucket, per resource
SLICES_KEY_PREFIX: Final = "slices#"  # a keyed resource's rate slices, per resource
SLOTS_KEY_PREFIX: Final = "slots#"  # a shared concurrency cap, per resource
KEY_LEASE_PREFIX: Final = "keylease#"  # keylease#<resource>#<key>: the key's owning dispatcher
KEY_OWNER_PREFIX: Final = "keyowner#"  # keyowner#<queue>: m#<dispatcher> = its heartbeat
LEASE_KEY_PREFIX: Final = "lease#"
SCHEDULE_KEY_PREFIX: Final = "sched#"
GROUP_KEY_PREFIX: Final = "group#"  # a group's join: its children and its callback
MAX_GROUP_CHILDREN: Final = 200  # their results (4 KiB each at most) fit the callback's body
MAX_CALLBACK_BODY_BYTES: Final = 65_536  # a callback's own body, kept in the group item
DISPATCHER_KEY_PREFIX: Final = "disp#"  # one live dispatcher's published status
DISPATCHER_DIRECTORY_KEY: Final = "dispatchers"  # the item listing the live dispatchers
RECORD_TTL_S: Final = 14 * 24 * 3600  # task records live as long as the DLQ keeps messages
MAX_RESULT_BYTES: Final = 4_096  # a larger result (as JSON) fails its attempt (docs/api.md)
STATUS_MAX_SCAN: Final = 10_000  # table items `dispatch status` reads to count tasks, by default
# The listing indexes (docs/formats.md, "Listing"): sparse GSIs over task records whose
# status is listed; both sort on LISTED_ATTRIBUTE = "<status>#<epoch seconds, 10.3 digits>".
LISTED_ATTRIBUTE: Final = "listed"
LIST_RUNNING_OVER_S: Final = 60.0
"""A running task is listed only when its timeout is longer than this: a shorter one
cannot be running long enough to look for, and listing every claim would cost each
task two index writes in and two out (docs/performance.md, "Listing")."""
INDEX_BY_STATUS: Final = "by-status"  # HASH status, RANGE listed
INDEX_BY_TASK: Final = "by-task"  # HASH task, RANGE listed
# The task name a record keeps when its message named none (an index key is never empty).
UNNAMED_TASK: Final = "(malformed)"

# --- dead-letter message attributes ------------------------------------------
DLQ_ATTR_PREFIX: Final = "dispatch-"
