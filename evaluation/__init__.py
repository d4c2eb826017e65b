"""
The evaluations: what a learner need not read to learn and train Show-o, and what every figure of the
README comes from. `python -m evaluation --help` lists the commands.

    evaluate.py       the image tokenizer (PSNR, codebook use), Show-o (GenEval-style, VQA, POPE, captions,
                      stories on the shapes world; classification and judged samples on CIFAR-10), and the
                      pipeline's metrics.json and pictures
    judge.py          the CIFAR-10 judge (a classifier trained here) and the Frechet distance in its features
    shapes_scorer.py  reads a shapes-world scene back from pixels: the detector of the GenEval-style table
"""
