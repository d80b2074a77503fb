"""Dispatch execution plane: runs handlers, reports outcomes, owns no state."""
