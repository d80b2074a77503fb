"""The tasks layer, above the producer: declarations, schedule expressions, argument checks."""
