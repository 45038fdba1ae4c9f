"""export: fold BatchNorm exactly into neighbouring layers of any Keras 3 model, write SavedModel / ONNX / TFLite,
and compare the outputs of every runtime. This package never imports `zoo`: it works on any user `.keras` file."""
