"""relabel: run the teacher once, train any student from cached soft labels."""
__version__ = "0.1.0"
