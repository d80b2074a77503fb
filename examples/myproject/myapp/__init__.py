"""myproject's application package: its Dispatch tasks live in myapp.tasks."""
