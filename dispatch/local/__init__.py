"""The embedded local AWS: emulator process, provisioning from deploy/template.yaml."""
