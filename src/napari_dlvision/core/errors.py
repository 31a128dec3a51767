"""Errors whose message is written for the person at the keyboard.

The GUI shows them as a napari notification and the CLI prints them as one
line; anything else is a bug and keeps its traceback.
"""


class UserInputError(ValueError):
    """Bad input the user can fix: wrong shape, nothing painted, bad file."""


class ModelFileError(UserInputError):
    """A model file that is missing, corrupted, foreign or incompatible."""
