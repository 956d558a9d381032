"""llama sidecar: llama.cpp in a child process, spoken to with JSON-RPC over stdio.

Layers, imports pointing one way: ``transport`` (framing, stdout guard) ->
``rpc`` (dispatch, ids, cancellation, the error boundary) -> ``methods`` (the
method table) -> ``service`` (models, queues) -> ``engine`` (llama.cpp).
``client`` is a Python host for the protocol.
"""
