"""The throttle layer, above the tasks: per-resource rate and concurrency, shared in DynamoDB."""
