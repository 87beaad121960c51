"""Runners (one protocol for every backend) and serving. Importing this package imports no heavy
library: each runner imports its backend inside load()."""
