"""The command-line front ends: the only code that turns errors into stderr lines and exit codes."""
