# Lets plain `pytest` (not only `python -m pytest`) import the top-level modules from tests/.
