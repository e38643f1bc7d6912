"""Stage one and what serves it: ``generate`` (the teacher over every stored view), ``verify`` (recompute
and check), ``publish`` (export, publish, pull), and their config records. Stage two is
``relabel.train``."""
