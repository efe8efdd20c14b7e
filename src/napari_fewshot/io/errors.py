"""Errors raised for volumes that cannot be read or written.

Each message names the file and the problem, and says how to fix it where there
is a fix.  They are not ``ValueError``s on purpose: napari takes a writer's
``ValueError`` to mean "no writer for this file" and would hide the message.
"""


class VolumeError(Exception):
    """A volume could not be read or written."""


class VolumeReadError(VolumeError):
    """A file or folder could not be read as a 3D volume."""


class VolumeWriteError(VolumeError):
    """A volume could not be written; nothing on disk was changed."""


def itk_reason(error: Exception) -> str:
    """The informative line of an ITK exception (its text runs over several lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "description:" in line.lower():
            return line.split(":", 1)[1].strip()
    return lines[-1] if lines else type(error).__name__
