"""Start a run: plan it, start the supervisor, install the filter, exec the command in place."""
