"""Data layer of msjax: label tables, raw-folder layouts, split lists, TFDS builders, the pipeline.

Importing this package is cheap and never imports TensorFlow: the GPU machines that train
have no TensorFlow, and the model code only needs `labels` and `normalize`. The TFDS
builders (`msjax.data.builders`) and the tf.data pipeline (`msjax.data.pipeline`) import
TensorFlow themselves, hiding every GPU from it first.
"""


def hide_gpus_from_tensorflow():
    """Imports TensorFlow with no GPU visible to it and returns the module.

    JAX owns the accelerators; TensorFlow only decodes and augments on the CPU. Hiding the
    GPUs must happen before TensorFlow initialises its devices, hence this single entry point
    used by every module that needs TensorFlow.

    Returns:
      The `tensorflow` module.
    """
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # Devices were already initialised (a caller imported TF first); nothing to undo then
        # unless a GPU is actually visible, which set_visible_devices would have reported.
        pass
    return tf
