"""Cache placement under `keras.distribution`, shared by
`keras_attention.distribution.place_cache` and `TokenGenerator` (this module
imports no layer, so layers can use it)."""

import keras


def place(cache, distribution=None, model_axis="model"):
    distribution = distribution or keras.distribution.distribution()
    if distribution is None or keras.backend.backend() != "jax":
        return cache
    mesh = distribution.device_mesh
    sizes = dict(zip(mesh.axis_names, mesh.shape))
    batch_axis = distribution.batch_dim_name

    def axis(name, size):
        if name in sizes and size is not None and size % sizes[name] == 0:
            return name
        return None

    def place(tensor):
        shape = tensor.shape
        if len(shape) != 5:
            return tensor
        axes = (axis(batch_axis, shape[0]), None, None)
        axes += (axis(model_axis, shape[3]), None)
        layout = keras.distribution.TensorLayout(axes, mesh)
        return keras.distribution.distribute_tensor(tensor, layout)

    return keras.tree.map_structure(place, cache)
