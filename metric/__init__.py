"""Similarity measures behind one registry: DreamSim (exact), raw backbones, a CNN, pixel metrics, LPIPS, UniSim.

Import order between rooms: common -> data -> metric -> {judge, indexer} -> app; ``lookalike.metric`` imports only
common and data.
"""

from lookalike.common.errors import WeightsNotFound as WeightsNotFound
from lookalike.data.transforms import PreprocessCfg as PreprocessCfg
from lookalike.metric._base import Metric as Metric
from lookalike.metric._base import get_device as get_device
from lookalike.metric._base import suggest_batch_size as suggest_batch_size
from lookalike.metric._builders import required_files as required_files
from lookalike.metric._cache import get_cache_dir as get_cache_dir
from lookalike.metric._factory import load_metric as load_metric
from lookalike.metric._factory import resolve_placement as resolve_placement
from lookalike.metric._precision import describe_auto as describe_auto
from lookalike.metric._precision import dtype_name as dtype_name
from lookalike.metric._precision import has_native_bf16 as has_native_bf16
from lookalike.metric._precision import resolve_dtype as resolve_dtype
from lookalike.metric._pretrained import BackboneCfg as BackboneCfg
from lookalike.metric._pretrained import DedupTiersCfg as DedupTiersCfg
from lookalike.metric._pretrained import MetricCfg as MetricCfg
from lookalike.metric._pretrained import WeightFile as WeightFile
from lookalike.metric._registry import get_metric_cfg as get_metric_cfg
from lookalike.metric._registry import get_metric_dim as get_metric_dim
from lookalike.metric._registry import is_metric as is_metric
from lookalike.metric._registry import list_metrics as list_metrics
from lookalike.metric._registry import register_backbone as register_backbone
from lookalike.metric._registry import register_builder as register_builder
from lookalike.metric._registry import register_metric as register_metric
from lookalike.metric._registry import unregister_metric as unregister_metric
from lookalike.metric.rerank import list_rerankers as list_rerankers
