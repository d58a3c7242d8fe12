"""Train ParNet on an image folder; `python train.py --help`."""
import sys

from keras_parnet.train import main

sys.exit(main())
