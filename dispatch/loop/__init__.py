"""The loop layer, above the workers: the dispatcher's stages, schedules, activity and metrics."""
