"""Pruning: remove weights (unstructured, 2:4) or whole units (neurons, heads, layers).

    magnitude.py        magnitude masks, global or per layer (Han et al. 2015)
    semi_structured.py  2:4 sparsity (Mishra et al. 2021), the pattern GPUs accelerate
    importance.py       weight / activation / Taylor-gradient scores (Molchanov et al. 2019)
    structured.py       smaller models: fewer MLP neurons, attention heads or layers

(Lab 03's figures and widgets are :mod:`infer_lab.lessons.lab03_pruning`.)
"""

from .importance import (SCORES, calibration_batches, head_scores, layer_scores, mlp_inputs,
                         mlp_scores)
from .magnitude import (apply_masks, layer_sparsity, magnitude_mask, magnitude_masks,
                        prunable_linears, prune_magnitude, sparsity_of)
from .semi_structured import is_2_4, mask_2_4, masks_2_4, prune_2_4, semi_structured_speedup
from .structured import (drop_layers, keep_top, n_params, prune_heads, prune_mlp, remove_neurons,
                         shrink_heads, shrink_mlp)

__all__ = ["magnitude_mask", "magnitude_masks", "apply_masks", "prune_magnitude", "sparsity_of",
           "layer_sparsity", "prunable_linears", "mask_2_4", "masks_2_4", "is_2_4",
           "prune_2_4", "semi_structured_speedup", "SCORES", "calibration_batches",
           "mlp_inputs", "mlp_scores", "head_scores", "layer_scores", "prune_mlp",
           "remove_neurons", "prune_heads", "drop_layers", "shrink_mlp", "shrink_heads",
           "keep_top", "n_params"]
