"""The names of the files and folders scaffold writes, defined once."""

BUILD_RECORD = "scaffold-build.json"  # in a model directory: what the build wrote, with sha256s
DEFAULT_OUTPUT = "model"  # the model directory inside a project folder
ANSWERS_FILE = ".copier-answers.yml"  # a project's Copier answers
