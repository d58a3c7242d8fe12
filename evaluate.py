"""Evaluate a trained run on its test split; `python evaluate.py --help`."""
import sys

from keras_parnet.cli.evaluate import main

sys.exit(main())
