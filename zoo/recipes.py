"""Training recipes: optimizer, learning-rate schedule, regularisation and batch size as one named unit.

`default` is zoo's recipe for small data on a CPU (Adam 3e-3, 10 % linear warm-up then cosine decay to 0, batch
32), measured on digits in docs/training.md. `paper` is the published recipe where a model has one:

- He et al. (2016) CIFAR ResNets (resnet20, resnet56; used for preact_resnet18 as in He et al.'s identity-mapping
  paper): SGD with momentum 0.9, learning rate 0.1, weight decay 1e-4, batch 128, 164 epochs (64k iterations
  on CIFAR-10's 50k images), learning rate ÷10 at 50 % and 75 % of training (32k and 48k iterations), no warm-up.

Weight decay is Keras' decoupled form (each step w ← w − lr·wd·w), which for SGD equals the L2 term of the paper up
to how momentum carries it. Any field can be overridden on the command line (`--lr`, `--batch-size`, …).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import keras

from zoo.checks import check_positive
from zoo.errors import ZooError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class Recipe:
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: float = 0.1  # fraction of the steps, linear from lr/10 (cosine schedule)
    milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: lr ÷ 10 at these fractions of the steps
    label_smoothing: float = 0.0
    batch_size: int = 32
    epochs: int | None = None  # None: the dataset's default

    def with_overrides(self, **overrides: Any) -> "Recipe":
        chosen = {key: value for key, value in overrides.items() if value is not None}
        recipe = replace(self, **chosen)
        recipe.check()
        return recipe

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ZooError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ZooError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        check_positive("lr", self.lr)
        for name in ("weight_decay", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ZooError(f"{name} must be a number in [0, 1), not {value!r}")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name), integer=True)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "milestones": list(self.milestones)}


DEFAULT = Recipe()
HE_CIFAR = Recipe(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step", warmup=0.0,
                  milestones=(0.5, 0.75), batch_size=128, epochs=164)
PAPER = {"resnet20": HE_CIFAR, "resnet56": HE_CIFAR, "preact_resnet18": HE_CIFAR}
RECIPE_NAMES = ("default", "paper")


def recipe_for(model_name: str, name: str = "default") -> Recipe:
    if name == "default":
        return DEFAULT
    if name == "paper":
        if model_name not in PAPER:
            raise ZooError(f"no published recipe for {model_name!r}; --recipe paper is for {', '.join(sorted(PAPER))}")
        return PAPER[model_name]
    raise ZooError(f"unknown recipe {name!r}; use one of: {', '.join(RECIPE_NAMES)}")


def compile_with(model, recipe: Recipe, *, steps: int, from_logits: bool = True, jit: bool = False) -> None:
    """Compile a classifier for `steps` optimizer steps with `recipe`: sparse cross-entropy (with label smoothing
    when asked), accuracy; `jit` compiles the train step with XLA."""
    if recipe.schedule == "cosine":
        warmup = int(steps * recipe.warmup)
        schedule = keras.optimizers.schedules.CosineDecay(
            recipe.lr / 10 if warmup else recipe.lr, decay_steps=max(1, steps - warmup),
            warmup_target=recipe.lr if warmup else None, warmup_steps=warmup,
        )
    elif recipe.schedule == "step":
        bounds = sorted({max(1, int(steps * m)) for m in recipe.milestones})
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            bounds, [recipe.lr * 0.1**i for i in range(len(bounds) + 1)]
        )
    else:
        schedule = recipe.lr
    decay = recipe.weight_decay or None
    if recipe.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=recipe.momentum, weight_decay=decay)
    else:
        optimizer = keras.optimizers.Adam(schedule, weight_decay=decay)
    loss = model_loss(recipe, from_logits)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=jit)


def model_loss(recipe: Recipe, from_logits: bool = True):
    """Sparse cross-entropy, with the recipe's label smoothing."""
    if recipe.label_smoothing:
        return SmoothedSparseCrossentropy(smoothing=recipe.label_smoothing, from_logits=from_logits)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


@keras.saving.register_keras_serializable(package="zoo")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels with label smoothing (Keras' sparse loss has none; the categorical one
    does, on one-hot labels)."""

    def __init__(self, smoothing: float = 0.1, from_logits: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.smoothing, self.from_logits = smoothing, from_logits

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), classes)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, from_logits=self.from_logits,
                                                     label_smoothing=self.smoothing)

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing, "from_logits": self.from_logits}
