"""The bottom room: small file helpers and the error hierarchy that every other room may import.

Import order between rooms: common -> data -> metric -> {judge, indexer} -> app. ``lookalike.common`` imports
nothing from the others (a test walks the imports and keeps it so).
"""

from lookalike.common.errors import ChecksumError as ChecksumError
from lookalike.common.errors import ConfigError as ConfigError
from lookalike.common.errors import DatasetError as DatasetError
from lookalike.common.errors import IndexDamaged as IndexDamaged
from lookalike.common.errors import IndexLocked as IndexLocked
from lookalike.common.errors import IndexMismatch as IndexMismatch
from lookalike.common.errors import IndexNeedsUpgrade as IndexNeedsUpgrade
from lookalike.common.errors import IndexNotFound as IndexNotFound
from lookalike.common.errors import InvalidArgument as InvalidArgument
from lookalike.common.errors import LookalikeError as LookalikeError
from lookalike.common.errors import MissingDependency as MissingDependency
from lookalike.common.errors import UnknownName as UnknownName
from lookalike.common.errors import WeightFileError as WeightFileError
from lookalike.common.errors import WeightsNotFound as WeightsNotFound
from lookalike.common.io import atomic_write_bytes as atomic_write_bytes
from lookalike.common.io import atomic_write_json as atomic_write_json
from lookalike.common.io import atomic_write_text as atomic_write_text
from lookalike.common.io import file_lock as file_lock
from lookalike.common.io import fsync_dir as fsync_dir
from lookalike.common.io import sha256_file as sha256_file
