"""Tools beside the project: benchmarks (bench.py), the GPU check (gpu_check.sh), pictures only the README uses (pictures.py)."""
