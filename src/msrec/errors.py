"""One error type for everything a user can get wrong, so the CLI can print one clear line."""


class MsrecError(Exception):
    """A problem with the user's input (data, config, run directory): the message names what is at fault."""
