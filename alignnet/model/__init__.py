"""AlignNet-BCI models: networks, baselines, data contract and artifacts. Pure: no optimizers, datasets or HTTP."""

from alignnet.model import alignnet, baselines, yardsticks  # noqa: F401  (registers the models)
from alignnet.model.base import BidirectionalModel, DecodePath, SimulatePath
from alignnet.model.contract import DataContract
from alignnet.model.registry import create_model, list_models, model_config, register_model

__all__ = [
    "BidirectionalModel", "DataContract", "DecodePath", "SimulatePath", "create_model", "list_models",
    "model_config", "register_model",
]
