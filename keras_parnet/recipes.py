"""Training recipes: named sets of `keras_parnet.train` settings
(`parnet-train --recipe NAME`; flags and `--config` override single values).

original  the original blog's recipe, `train.DEFAULTS`: Adam at 1e-3 times
          0.95 per epoch, ImageDataGenerator-style augmentation, no label
          smoothing, EMA, RandAugment, random erasing or mixup, synchronized
          BatchNorm.
paper     the official command that trained ParNet-S for the paper
          (imankgoyal/NonDeepNetworks, imagenet/train_models.sh, on
          timm 0.4.12):

              distributed_train_port_auto.sh 1 0 8 ... --model simplenet_repvgg
                  -b 128 --warmup-epochs 0 --amp --model-ema --model-ema-decay 0.9999
                  --smoothing 0.1 --lr 0.001 --sched cosine --opt sgd
                  --input-size 3 224 224 --remode pixel --aa rand-m9-mstd0.5
                  --mixup 0.0 --epochs 120 --reprob 0.2

          with the defaults of its imagenet/train.py for what the command
          leaves out: momentum 0.9, weight decay 1e-4, cutmix 0, no
          --sync-bn, no early stopping, and a learning rate not scaled by the
          batch size. `-b 128` is per GPU on 8 GPUs: here 128 per replica.
          ParNet-M uses the same command; ParNet-L and -XL erase with
          probability 0.4 (`--random-erasing 0.4`).

Where Keras differs from that timm run:
- timm's `--opt sgd` is `torch.optim.SGD(nesterov=True)`: here
  `keras.optimizers.SGD(nesterov=True)` ("nesterov"; "sgd" is plain momentum).
- timm's weight decay is L2 added to the gradient (so momentum accumulates
  it) and skips biases and BatchNorm parameters; Keras' `weight_decay` is
  decoupled (`w -= lr * weight_decay * w` each step), here also skipping
  every 1-D weight (biases, BatchNorm).
- timm's cosine ends at its `--min-lr` 1e-5 and then trains 10
  `--cooldown-epochs` at 1e-5 (130 epochs in all); here the cosine falls
  towards 0 over `epochs` and there is no cooldown.
- timm's EMA (`ModelEmaV2`) starts from the initial weights and also averages
  BatchNorm's moving statistics; Keras' `use_ema` starts from the weights of
  the first step and averages the trainable weights only.
- rand-m9-mstd0.5 draws each operation's magnitude around 9 with standard
  deviation 0.5 and `--remode pixel` erases with per-pixel normal noise; see
  `keras_parnet.data` for what `randaugment` and `random_erasing` do here.
- timm crops with RandomResizedCrop (scale 0.08-1) and flips; the fused affine
  augmentation of `keras_parnet.data` stays as in the original recipe.
- `--amp` is a speed setting: pass `--mixed-precision` on GPUs.
"""

from keras_parnet.train import DEFAULTS

PAPER = {
    "optimizer": "nesterov",
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "warmup_epochs": 0,
    "epochs": 120,
    "patience": 120,  # timm does not stop early
    "batch_size": 128,
    "image_size": 224,
    "label_smoothing": 0.1,
    "ema": 0.9999,
    "randaugment": 9,
    "random_erasing": 0.2,
    "mixup": 0.0,
    "cutmix": 0.0,
    "sync_bn": False,
}
# The settings each recipe sets: the original recipe is the defaults of the same keys.
RECIPES = {"original": {key: DEFAULTS[key] for key in PAPER}, "paper": PAPER}
