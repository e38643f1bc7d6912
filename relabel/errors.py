"""relabel's error family: problems the user can fix, each message naming the problem and the fix.

The lowest layer: every other module may import it (``relabel.storage.errors`` re-exports it).

The library raises these (keeping any cause); only the CLI turns them into one line and exit code 2.
Messages name settings as the config fields a Python caller sets, in backticks (`views`,
`resume=True`, `mode='online'`); the CLI rewrites each into the option a shell user types
(--views, --resume, --mode online). ``named`` writes that form.
"""


class RelabelError(Exception):
    """Base of every error the user can fix (bad input, damaged or mismatched data)."""


class ConfigError(RelabelError):
    """A setting that cannot work (out of range, contradictory, unknown)."""


class SourceError(RelabelError):
    """The images: missing, ambiguous, malformed or hostile input."""


class StoreError(RelabelError):
    """A label store or export: missing, damaged, edited, or made with other settings."""


def named(name: str, value=...) -> str:
    """How a message names setting ``name`` (set to ``value``, if given): `name` or `name=value`."""
    return f"`{name}`" if value is ... else f"`{name}={value!r}`"


setting = named  # deprecated name (relabel.settings.setting declares a config field)


# The name the code base grew up with: every RelabelError is a UserError and vice versa. Deprecated:
# raise and catch the typed errors above.
UserError = RelabelError
