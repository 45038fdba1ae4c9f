"""Model families. Importing this package registers every family with `zoo.registry` (one file per family)."""

from zoo.models import cnn_bn, style  # noqa: F401
