"""The operations layer at the top of Dispatch: the CLI, status views, the live view and the DLQ."""
