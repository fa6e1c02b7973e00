"""Weight quantization: primitives, quantized linear modules, and the module swap.

Each method lives in its own file and plugs into a model from outside by replacing
``nn.Linear`` modules (see :func:`quantize_model`).
"""

from .apply import (
    SCHEMES,
    Scheme,
    Sensitivity,
    is_quantized,
    quantize_model,
    sensitivity_scan,
)
from .awq import AWQLinear, awq_quantize_model
from .calibrate import calibration_ids
from .embedding import QuantizedEmbedding
from .gptq import gptq_quantize_model
from .int4 import Int4Linear
from .int8 import Int8Linear
from .packed import PackedFallback, PackedInt4Linear, PackedInt8Linear
from .primitives import (
    QTensor,
    bits_per_weight,
    dequantize,
    pack_int2,
    pack_int4,
    quantize,
    unpack_int2,
    unpack_int4,
)

__all__ = [
    "SCHEMES", "AWQLinear", "Int4Linear", "Int8Linear", "PackedFallback", "PackedInt4Linear",
    "PackedInt8Linear", "QTensor", "QuantizedEmbedding", "Scheme", "Sensitivity",
    "awq_quantize_model", "bits_per_weight", "calibration_ids", "dequantize",
    "gptq_quantize_model", "is_quantized", "pack_int2", "pack_int4", "quantize",
    "quantize_model", "sensitivity_scan", "unpack_int2", "unpack_int4",
]
