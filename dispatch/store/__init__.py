"""The store layer, above the data: AWS clients and retries, the task table, SQS batching."""
