"""AlignNet-BCI models: networks, baselines, data contract and artifacts. Pure: no optimizers, datasets or HTTP."""

from model import alignnet, baselines  # noqa: F401  (registers the models)
from model.base import BidirectionalModel, DecodePath, SimulatePath
from model.contract import DataContract
from model.registry import create_model, list_models, model_config, register_model

__all__ = [
    "BidirectionalModel", "DataContract", "DecodePath", "SimulatePath", "create_model", "list_models",
    "model_config", "register_model",
]
