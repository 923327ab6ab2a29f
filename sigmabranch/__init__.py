"""The `sigmabranch` command line."""
