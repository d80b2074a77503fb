"""The producer layer, above the store: enqueueing tasks and reading or cancelling their records."""
