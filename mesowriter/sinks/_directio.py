"""Kept for imports of old: the aligned file now lives in `mesowriter._platform`."""

from mesowriter._platform import DEFAULT_SYNC_EVERY as DEFAULT_SYNC_EVERY
from mesowriter._platform import AlignedFile as AlignedFile
from mesowriter._platform import Mode as Mode
