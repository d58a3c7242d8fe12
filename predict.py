"""Classify images with a trained ParNet; `python predict.py --help`."""
import sys

from keras_parnet.cli.predict import main

sys.exit(main())
