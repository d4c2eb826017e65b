"""`python -m evaluation tokenizer | showo | judge`: the evaluations of evaluation/evaluate.py."""
from evaluation.evaluate import main

main()
