"""The help formatter of every subcommand that lists its defaults."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help only where there is a default to show (not None)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)
