"""The data at the bottom of Dispatch: formats, records, policies and errors; no AWS calls."""
