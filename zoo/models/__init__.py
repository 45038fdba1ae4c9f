"""Model families. Importing this package registers every family with `zoo.registry` (one file per family)."""

from zoo.models import cnn_bn, dncnn, mobilenet, resnet_cifar, style, vgg  # noqa: F401
