"""PYNQ host driver (numpy and pynq only, never torch); built in issue #6."""
