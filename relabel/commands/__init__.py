"""The command layer: the ``relabel`` CLI (``cli``: the typer app, ``stages``/``share``/
``train_command``: the stage commands) and the commands built on the library: ``bench``, ``demo``,
``study``.

Layers (tests/test_layers.py checks them): errors <- storage <- core (views, teacher, models, rng,
...) <- stages (generate, verify, publish, train) <- commands. Commands use the stages' public names
only; nothing below imports a command.
"""
