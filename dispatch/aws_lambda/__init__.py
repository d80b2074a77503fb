"""The Lambda layer, above the loop: the dispatcher function and the leases that cap dispatchers."""
