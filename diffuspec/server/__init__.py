"""``diffuspec serve``: an OpenAI-compatible HTTP server on the engine (``app.py``, ``protocol.py``,
``metrics.py``), in one process or as engine replicas behind Ray Serve (``replicas.py``), and its load test
(``load.py``). Needs the ``serve`` extra (and ``ray`` for replicas); importing this package alone imports
neither."""
