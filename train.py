"""Train ParNet on an image folder; `python train.py --help`."""
import sys

from keras_parnet.cli.train import main

sys.exit(main())
