"""Loading nnScreener plans: nnU-Net's plans JSON plus its ``"nnscreener"`` block, behind one typed view.

Every stage after planning (training, density, prediction) starts from :func:`load_plans`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from nnscreener import paths
from nnscreener.config import ScreenerConfig, merge, validate
from nnscreener.errors import ScreenerError

PLANS_BLOCK = "nnscreener"


def network_configuration_name(plans: Mapping[str, Any], masked_input: bool) -> str:
    """The plans' configuration for a network: the condition configuration for a masked-input (condition) network
    when the plans have one (plans written before it existed use ``3d_fullres`` for both networks)."""
    if masked_input and paths.CONDITION_CONFIGURATION in plans.get("configurations", {}):
        return paths.CONDITION_CONFIGURATION
    return paths.CONFIGURATION


@dataclass
class ScreenerPlans:
    """A dataset's plans as nnU-Net and nnScreener see them.

    Attributes:
        dataset_name: e.g. ``Dataset500_SyntheticCT``.
        plans_name: e.g. ``nnScreenerPlans_cpu``.
        plans: the raw plans dict (nnU-Net format plus the ``nnscreener`` block).
        dataset_json: the dataset's ``dataset.json`` as copied to ``nnUNet_preprocessed``.
        config: the resolved :class:`ScreenerConfig` (preset < plans block < overrides).
    """

    dataset_name: str
    plans_name: str
    plans: Dict[str, Any]
    dataset_json: Dict[str, Any]
    config: ScreenerConfig

    @property
    def plans_manager(self):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(self.plans)

    @property
    def configuration_manager(self):
        return self.plans_manager.get_configuration(paths.CONFIGURATION)

    def network_configuration_manager(self, masked_input: bool = False):
        """The configuration whose ``architecture`` builds the descriptor (False) or condition (True) network."""
        return self.plans_manager.get_configuration(network_configuration_name(self.plans, masked_input))

    @property
    def preprocessed_dir(self) -> Path:
        return paths.preprocessed_root() / self.dataset_name

    @property
    def data_dir(self) -> Path:
        """Folder of the preprocessed cases (``.b2nd`` + ``_seg.b2nd`` + ``.pkl``)."""
        return self.preprocessed_dir / self.configuration_manager.data_identifier

    def with_overrides(self, overrides: Optional[Mapping[str, Any]]) -> "ScreenerPlans":
        """A copy whose config has ``overrides`` (a nested dict, e.g. from ``--set``) applied."""
        if not overrides:
            return self
        return ScreenerPlans(self.dataset_name, self.plans_name, self.plans, self.dataset_json,
                             validate(merge(self.config, overrides)))


def config_from_plans(plans: Mapping[str, Any], source: str = "plans") -> ScreenerConfig:
    if PLANS_BLOCK not in plans:
        raise ScreenerError(
            f"{source} has no '{PLANS_BLOCK}' block: these are not nnScreener plans. "
            f"Run nnScreener_plan_and_preprocess first."
        )
    return validate(ScreenerConfig.from_dict(plans[PLANS_BLOCK]))


def load_plans_file(plans_path: Union[str, Path], dataset_json_path: Union[str, Path]) -> ScreenerPlans:
    """Loads plans and dataset.json from explicit files (e.g. copies in a result folder)."""
    plans_path, dataset_json_path = Path(plans_path), Path(dataset_json_path)
    for p in (plans_path, dataset_json_path):
        if not p.is_file():
            raise ScreenerError(f"missing file {p}")
    try:
        plans = json.loads(plans_path.read_text())
        dataset_json = json.loads(dataset_json_path.read_text())
    except json.JSONDecodeError as e:
        raise ScreenerError(f"cannot parse {plans_path} or {dataset_json_path}: {e}") from e
    return ScreenerPlans(plans["dataset_name"], plans["plans_name"], plans, dataset_json,
                         config_from_plans(plans, str(plans_path)))


def load_plans(dataset: Union[int, str], plans_name: str = paths.DEFAULT_PLANS) -> ScreenerPlans:
    """Loads ``$nnUNet_preprocessed/DatasetXXX/<plans_name>.json`` and the dataset.json beside it.

    Raises:
        ScreenerError: the dataset or the plans do not exist (with a hint to run planning first).
    """
    name = paths.dataset_name(dataset)
    pre = paths.preprocessed_root() / name
    plans_path = pre / f"{plans_name}.json"
    if not plans_path.is_file():
        available = sorted(p.stem for p in pre.glob("*.json") if p.name not in ("dataset.json",
                                                                                  "dataset_fingerprint.json"))
        raise ScreenerError(
            f"no plans {plans_name!r} for {name} (looked for {plans_path}); available: {available or 'none'}. "
            f"Run: nnScreener_plan_and_preprocess -d {dataset}"
            + (" --preset cpu" if plans_name.endswith("_cpu") else "")
        )
    return load_plans_file(plans_path, pre / "dataset.json")
