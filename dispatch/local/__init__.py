"""The local layer, above the Lambda one: the embedded local AWS, demo, dev and the example app."""
