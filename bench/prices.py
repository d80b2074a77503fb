"""AWS prices the benchmark turns requests into dollars with: the one place to update them.

US East (N. Virginia), on-demand list prices, no free tier, checked 2026-11. The
billing rules that decide how many units a request costs (64 KiB chunks, read and
write units from item sizes) live in :mod:`bench.billing`; only numbers live here.
"""

from __future__ import annotations

from typing import Final

# --- SQS --------------------------------------------------------------------------
SQS_STANDARD_PER_MILLION_REQUESTS: Final = 0.40
"""Standard queue; every 64 KiB chunk of a request's payload is billed as one request."""
SQS_FIFO_PER_MILLION_REQUESTS: Final = 0.50
SQS_BILLING_CHUNK_BYTES: Final = 64 * 1024

# --- DynamoDB on-demand -------------------------------------------------------------
DYNAMODB_PER_MILLION_WRITE_UNITS: Final = 0.625
"""One write request unit: a standard write of up to 1 KB (a transactional write costs two)."""
DYNAMODB_PER_MILLION_READ_UNITS: Final = 0.125
"""One read request unit: a strongly consistent read of up to 4 KB (eventually consistent: half;
transactional: two)."""
DYNAMODB_WRITE_UNIT_BYTES: Final = 1024
DYNAMODB_READ_UNIT_BYTES: Final = 4096

# --- Lambda (x86) ----------------------------------------------------------------------
LAMBDA_PER_MILLION_REQUESTS: Final = 0.20
LAMBDA_PER_GB_SECOND: Final = 0.0000166667
DISPATCHER_MEMORY_MB: Final = (128, 256)
"""The dispatcher function sizes the idle cost is priced at (the summary uses the larger)."""

# --- the schedule that starts the dispatcher ---------------------------------------------
SCHEDULE_PER_MILLION_INVOCATIONS: Final = 0.0
"""A SAM ``Schedule`` event is an EventBridge rule on the default bus: no charge. (EventBridge
Scheduler would be $1.00 per million invocations beyond its 14 million free a month.)"""
SCHEDULE_TICKS_PER_HOUR: Final = 60
"""``rate(1 minute)``, the dispatcher's default and the shortest schedule AWS allows."""
HOURS_PER_MONTH: Final = 730

# --- the comparison: an idle SQS -> Lambda event source mapping ----------------------------
ESM_IDLE_RECEIVES_PER_MINUTE: Final = 15
"""Published figure: an idle event source mapping long-polls with about 15 empty receives a
minute (five pollers, 20 s each), about 650,000 requests a month."""

# --- Fargate (the service mode: deploy/service.yaml) --------------------------------------
FARGATE_PER_VCPU_HOUR: Final = 0.04048
"""Linux/x86, on-demand, per vCPU-hour (ARM64: 0.03238)."""
FARGATE_PER_GB_HOUR: Final = 0.004445
"""Linux/x86, on-demand, per GB of memory an hour (ARM64: 0.00356)."""
