"""The exit codes every command shares (docs/design.md §5.2).

validate 0 valid / 1 invalid; plan 0 no changes / 2 changes / 3 refused / 1 error; apply 0 done or
nothing to do / 3 refused / 1 error. Interrupted (Ctrl-C): 130, as a shell reports a SIGINT.
"""

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_REFUSED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
