"""Running a built model: ``scaffold test`` (smoke), distributed runs, run records."""
