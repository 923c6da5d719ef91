"""Teams sharing one Ray cluster: resource groups, admission, identity, the hypothesis queue (``docs/teams.md``)."""

import logging

# A library logs; the application decides where to. Without a handler here, Python's last-resort
# handler would print refusals onto the CLI's one-line errors.
logging.getLogger(__name__).addHandler(logging.NullHandler())
