"""A crash-safe, incremental FAISS + SQLite index of image collections; search and dedup.

Import order between rooms: common -> data -> metric -> {judge, indexer} -> app. Callers see the catalog only
through the read models exported here (``ImageInfo``, ``BuildInfo``, ``Hit``, ``index_info``) and the constants
(``KEEP_RULES``, ``GROUP_MODES``, ``CATALOG_FILE``). Writers (``build_index`` / ``index_folders``,
``import_embeddings`` / ``import_into``, ``check_index(repair=True)``, ``set_dedup_threshold``) share one writer
session and one ``BuildConfig``; readers (``open_index``, ``search``, ``find_duplicates``, ``index_info``) never
write. See ``docs/indexer.md``.
"""

from lookalike.common.errors import IndexDamaged as IndexDamaged
from lookalike.common.errors import IndexNeedsUpgrade as IndexNeedsUpgrade
from lookalike.indexer._catalog import CATALOG_FILE as CATALOG_FILE
from lookalike.indexer._catalog import SCHEMA_VERSION as SCHEMA_VERSION
from lookalike.indexer._check import CheckReport as CheckReport
from lookalike.indexer._check import check_index as check_index
from lookalike.indexer._config import BuildConfig as BuildConfig
from lookalike.indexer._config import EmbedOptions as EmbedOptions
from lookalike.indexer._config import ImportOptions as ImportOptions
from lookalike.indexer._dedup import CHAIN_LIMIT as CHAIN_LIMIT
from lookalike.indexer._dedup import GROUP_MODES as GROUP_MODES
from lookalike.indexer._dedup import KEEP_RULES as KEEP_RULES
from lookalike.indexer._dedup import DedupReport as DedupReport
from lookalike.indexer._dedup import DuplicateGroup as DuplicateGroup
from lookalike.indexer._dedup import DuplicateMember as DuplicateMember
from lookalike.indexer._dedup import DuplicatePair as DuplicatePair
from lookalike.indexer._dedup import find_duplicates as find_duplicates
from lookalike.indexer._dedup_lists import ProbeReport as ProbeReport
from lookalike.indexer._dtypes import format_dtypes as format_dtypes
from lookalike.indexer._import import import_embeddings as import_embeddings
from lookalike.indexer._import import import_into as import_into
from lookalike.indexer._index import ImageIndex as ImageIndex
from lookalike.indexer._index import index_exists as index_exists
from lookalike.indexer._index import open_index as open_index
from lookalike.indexer._info import format_info as format_info
from lookalike.indexer._info import index_info as index_info
from lookalike.indexer._labels import LABEL_SOURCES as LABEL_SOURCES
from lookalike.indexer._labels import Label as Label
from lookalike.indexer._labels import LabelSummary as LabelSummary
from lookalike.indexer._labels import add_labels as add_labels
from lookalike.indexer._labels import list_labels as list_labels
from lookalike.indexer._labels import read_decisions_csv as read_decisions_csv
from lookalike.indexer._models import BuildInfo as BuildInfo
from lookalike.indexer._models import Hit as Hit
from lookalike.indexer._models import ImageInfo as ImageInfo
from lookalike.indexer._pipeline import build_index as build_index
from lookalike.indexer._pipeline import index_folders as index_folders
from lookalike.indexer._quarantine import MoveSummary as MoveSummary
from lookalike.indexer._quarantine import move_duplicates as move_duplicates
from lookalike.indexer._quarantine import undo_moves as undo_moves
from lookalike.indexer._report import REPORT_WRITERS as REPORT_WRITERS
from lookalike.indexer._report import write_report as write_report
from lookalike.indexer._search import search as search
from lookalike.indexer._structure import choose_structure as choose_structure
from lookalike.indexer._summary import ImportSummary as ImportSummary
from lookalike.indexer._summary import IndexSummary as IndexSummary
from lookalike.indexer._tiers import TIERS as TIERS
from lookalike.indexer._tiers import LabelledDistances as LabelledDistances
from lookalike.indexer._tiers import TierBounds as TierBounds
from lookalike.indexer._tiers import get_tier_bounds as get_tier_bounds
from lookalike.indexer._tiers import labelled_distances as labelled_distances
from lookalike.indexer._tiers import set_tiers as set_tiers
from lookalike.indexer._writer import set_dedup_threshold as set_dedup_threshold
