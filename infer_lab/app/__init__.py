"""Applications built on the decoding loop (see DESIGN.md: prompt/semantic cache, cascade,
constrained decoding, rate limits).

Modules are imported where used; importing this package loads nothing heavy.

    regex_parse    regex syntax -> a syntax tree over code-point intervals
    regex_fsm      syntax tree -> Thompson NFA -> DFA (subset construction, minimized)
    json_schema    a JSON-Schema subset -> a regex
    token_mask     DFA state -> allowed token ids, via a token trie walked through the DFA
    constrained    the constraint contract, constrained_generate, check_draft
"""
