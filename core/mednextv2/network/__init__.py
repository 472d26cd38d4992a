"""The MedNeXt-v2 network: config and presets, blocks, model, official checkpoint import."""
from .config import PRESETS, MedNeXtConfig
from .model import DIVISOR, STAGES, MedNeXt
from .official import config_from_state_dict, from_official_state_dict, official_state_dict, upkern

__all__ = ["MedNeXtConfig", "PRESETS", "MedNeXt", "DIVISOR", "STAGES", "from_official_state_dict",
           "config_from_state_dict", "official_state_dict", "upkern"]
