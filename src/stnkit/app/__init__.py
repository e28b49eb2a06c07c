"""The application built on the library: the command line, the paper's tables, the demo,
figures, export and prediction."""
