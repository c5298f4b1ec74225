"""Target sides: the systems Bitbucket issues are synced with. `local` is the built-in helpdesk."""
