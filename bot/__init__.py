"""The running service: app assembly, CLI, conversation flows and their texts."""
