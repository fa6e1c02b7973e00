"""What the labs show: each lab's figures, widgets and demo drivers, one module per lab.

    figures.py                      figures several labs draw; COLORS, layout(): the house style
    widgets.py                      Explorer, the base of every interactive figure; device memory
    lab00_welcome.py                roofline, latency distribution, memory and cost calculators
    lab01_kv_cache.py               time per token with/without the cache, KV-cache calculator
    lab02_quantization.py           the size / perplexity / speed Pareto explorer
    lab02_quantization_explain.py   number formats, granularity, outliers, GPTQ and AWQ steps
    lab02_quantization_storage.py   GGUF block bytes, the quantized KV cache, a linear timed
    lab03_pruning.py                sparsity explorer, 2:4 pattern, sparse vs dense matmul
    lab04_distillation.py           soft targets, why T^2, forward vs reverse KL, live curves
    lab05_speculative.py            verification cost, alpha and speedup against k, break-even
    lab05_speculative_distribution.py  the acceptance rule keeps p (chi-square), wrong rules
    lab05_speculative_trees.py      learned drafts on alpha vs c, token trees step by step, tree sampling
    lab06_serving.py                batching timelines, block tables, load curves
    lab06_serving_trace.py          drive an engine over a workload: ticks or wall clock
    lab06_serving_reads.py          how a decode step reads the paged pool, timed
    lab07_kernels.py                programs and masks, fusion bytes, int4 GEMV bytes
    lab07_kernels_tiles.py          matmul tiles, FlashAttention's online softmax; paged reads
    lab07_kernels_runs.py           code-m's scores and an int4 layer through kernels; roofline
    lab09_applications.py           prompt caching runs, the semantic cache's threshold, levers' $
    lab09_applications_decode.py    the cascade's quality-cost slider, the JSON-schema editor
    lab09_applications_traffic.py   a token bucket against a burst, the autoscaling explorer

The techniques they show live in the package named after them (``infer_lab.quant``,
``infer_lab.prune``, ``infer_lab.distill``, ``infer_lab.speculative``,
``infer_lab.serving``, ``infer_lab.kernels``, ``infer_lab.app``); what they measure with lives in
``infer_lab.metrics`` and ``infer_lab.quality``; how big each lab's experiments are, in
``infer_lab.scale``.
Nothing is imported here: a lab imports its own module (they need ipywidgets and plotly).
"""
