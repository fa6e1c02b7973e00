"""The lab catalogue: each lab's id and the names of its exercises, in order, as plain data.

Torch-free and import-free on purpose: the JupyterLab extension's server imports it to
count each lab's exercises for the navigator, and must never pay for torch. The exercise
modules (``exercises/<topic>.py``) take their lab id from here, and
:mod:`infer_lab.exercises.registry` checks at import that the exercises they define are
exactly the ones listed here, in the same order, so the two cannot drift apart.
"""

from __future__ import annotations

__all__ = ["LABS", "check_registry"]

WELCOME = "00_welcome"
KV_CACHE = "01_kv_cache"
QUANTIZATION = "02_quantization"
PRUNING = "03_pruning"
DISTILLATION = "04_distillation"
SPECULATIVE = "05_speculative_decoding"
SERVING = "06_serving"
KERNELS = "07_kernels"
RUNTIMES = "08_runtimes"
APPLICATIONS = "09_applications"

# {lab id (the notebook's name): its exercises, in the order the lab presents them}
LABS: dict[str, tuple[str, ...]] = {
    WELCOME: ("greedy_decode", "decode_tokens_per_second", "weight_bytes",
              "cost_per_million_tokens"),
    KV_CACHE: ("decode_attention", "kv_cache_bytes", "sliding_window_mask"),
    QUANTIZATION: ("absmax_quantize", "group_quantize", "pack_int4", "llm_int8_matmul",
                   "gptq_quantize", "awq_scale_search", "kivi_quantize_keys"),
    PRUNING: ("magnitude_mask", "mask_2_4", "remove_neurons", "neuron_importance"),
    DISTILLATION: ("soft_targets", "kd_loss", "distill_step"),
    SPECULATIVE: ("temperature_probs", "accept_or_resample", "verify_draft",
                  "expected_tokens_per_call", "speculative_speedup", "tree_attention_mask",
                  "accept_among_siblings"),
    SERVING: ("block_tables", "schedule_step", "preempt_victims", "prefix_lookup"),
    KERNELS: ("softmax_kernel", "online_softmax_kernel", "int4_gemv_kernel"),
    RUNTIMES: ("roofline_tokens_per_s", "gemv_reduction", "break_even_tokens", "op_kind"),
    APPLICATIONS: ("token_mask", "cascade_expected_cost", "token_bucket"),
}


def check_registry(defined: dict[str, list[str]]) -> None:
    """Raise if the exercises the modules define ({lab: names}) differ from :data:`LABS`."""
    listed = {lab: list(names) for lab, names in LABS.items()}
    if defined != listed:
        diff = {lab: (defined.get(lab), listed.get(lab)) for lab in {*defined, *listed}
                if defined.get(lab) != listed.get(lab)}
        raise RuntimeError("infer_lab/exercises/catalog.py lists other exercises than the "
                           f"exercise modules define ({{lab: (defined, listed)}}): {diff}")
