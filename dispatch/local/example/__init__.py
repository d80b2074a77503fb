"""The example application used by the demo and the SAM template."""
