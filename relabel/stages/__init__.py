"""Stage one and what serves it: ``generate`` (the teacher over every stored view), ``verify`` (recompute
and check), ``publish`` (export, publish, pull), ``show`` and ``stats`` (a contact sheet and the
statistics of a label set; their records ``show_config``), and their config records. Stage two is
``relabel.train``."""
