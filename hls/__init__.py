"""FINN+ hardware flow for the tree; built in issue #5."""
